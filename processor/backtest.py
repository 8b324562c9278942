"""Backtest one trigger against history: what it would have fired, written nowhere.

``scripts/backtest.py`` is the command; this is its library. The trigger is loaded by id or name
whatever its ``enabled`` flag (a disabled trigger is how one is tried before it goes live), with
or without actions, and compiled by the processor's own ``compile_trigger``; events are judged by
a one-trigger :class:`processor.registry.TriggerRegistry` — its ``matches``, or with conditions
its match indexes fed a log decoded once up front (the per-condition counts need it decoded
anyway) — the match index and compiled conditions the processor uses, not a second evaluator.

Where the events come from (:func:`plan_segments`):

- **stored**: blocks the indexer has stored for this trigger — from the chain's oldest stored
  event to its checkpoint, when ``INGEST_ADDRESSES`` is empty or holds every address of the
  trigger. Read page by page by ``(chain_id, block_number)``, valid events of the trigger's
  ``topic0`` and addresses only;
- **node**: the rest (before the stored history, above the checkpoint, or a contract the indexer
  does not ingest) is read from ``RPC_URL`` by :func:`ingest.trigger_logs.trigger_logs` — ingest's
  own fetcher, range adaptation and completeness proof, filtered by address and ``topic0``. The
  address set is :func:`trigger_addresses`: one address, or none for any contract.

A factory trigger (``triggers.factory_*``) watches the children its factory created at or before
each log's block. Its children are found first (:func:`children_from_db`,
:func:`children_from_node`), from the factory's creation logs up to the range's end — from
``factory_children`` where the creation logs are stored and the factory is registered, from the
stored creation logs themselves where it is not, from the node (the factory's address and
creation ``topic0``, proven complete) elsewhere. Then the children's logs are read, stored or
from the node, with the children as the address filter, or — past
:data:`ingest.factories.MAX_FILTER_ADDRESSES` children — by ``topic0`` alone and kept here when
their emitter is a child. The :class:`Evaluator` counts an event only when its emitter was
created at or before its block, so a look-alike contract (same event, another factory) never
matches. Nothing is registered: no ``factories`` or ``factory_children`` row is written.

Besides the matches the report counts, per leaf condition, the candidate events it was true for
(a leaf true for none is a threshold or address that never happens), and the candidate events
that do not decode under the trigger's signature (a wrong ``indexed`` for that contract shows up
here rather than in production). Nothing is written: no delivery, no ``triggers.error``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from core.abi import DecodeError
from core.errors import InvalidTrigger, PermanentError
from core.factories import Factory, new_children
from processor.conditions import Condition
from processor.index import DecodeMemo, Entry, MatchIndex
from processor.registry import (
    ChildLookup,
    CompiledTrigger,
    TriggerRegistry,
    TriggerRow,
    compile_trigger,
)

BLOCK_PAGE = 5000
FIRST_MATCHES = 5

ProgressCallback = Callable[[int], None]
"""``progress(blocks_done)`` after each page or range."""

_TRIGGER = """
SELECT t.id, t.name, t.chain_id, t.address, t.event_signature, t.conditions, t.confirmations,
       t.enabled, t.error, t.factory_address, t.factory_event_signature, t.factory_parameter,
       coalesce(array_agg(a.id ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL), '{}') AS action_ids,
       coalesce(array_agg(a.config::text ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL), '{}')
           AS action_configs
FROM triggers t LEFT JOIN actions a ON a.trigger_id = t.id AND a.enabled
WHERE t.id = $1 OR ($1 IS NULL AND t.name = $2)
GROUP BY t.id"""

# The trigger's valid events of a block page; $5 NULL = any contract.
_STORED_EVENTS = """
SELECT id, chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index, address,
       topic0, topic1, topic2, topic3, data
FROM events
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3 AND NOT invalidated AND topic0 = $4
  AND ($5::text[] IS NULL OR address = ANY($5::text[]))
ORDER BY block_number, log_index"""

# A registered factory's children created in a block range (``factory_children`` holds exactly
# the children of its valid stored creation logs).
_FACTORY_ID = """
SELECT id FROM factories
WHERE chain_id = $1 AND address = $2 AND topic0 = $3 AND child_topic = $4 AND child_offset = $5"""
_REGISTERED_CHILDREN = """
SELECT child_address, min(block_number) AS created FROM factory_children
WHERE factory_id = $1 AND block_number BETWEEN $2 AND $3
GROUP BY child_address"""


class BacktestError(PermanentError):
    """A bad trigger reference, an invalid trigger or a bad range: one line for the user."""


@dataclass(frozen=True)
class Segment:
    """``first..last`` read from ``source`` (``"stored"`` or ``"node"``)."""

    source: str
    first: int
    last: int

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1


@dataclass
class LeafCount:
    """One leaf condition and the candidate events it was true for."""

    path: str
    text: str
    true: int = 0


@dataclass
class DecodeFailure:
    block_number: int
    log_index: int
    tx_hash: str
    reason: str


@dataclass
class BacktestReport:
    """What the trigger would have fired over ``from_block..to_block``."""

    trigger_id: int
    trigger_name: str
    enabled: bool
    chain_id: int
    from_block: int
    to_block: int
    segments: list[Segment] = field(default_factory=list)
    candidates: int = 0  # events of the trigger's topic0 and addresses (or children)
    # A factory trigger: where its creation logs came from, and the children they created.
    children_segments: list[Segment] = field(default_factory=list)
    children: int = 0
    matches: int = 0
    decode_failures: int = 0
    first_decode_failure: DecodeFailure | None = None
    leaves: list[LeafCount] = field(default_factory=list)
    # The first matching events (rows with the ``events`` columns; ``id`` None from the node).
    first_matches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def blocks(self) -> int:
        return self.to_block - self.from_block + 1

    @property
    def matches_per_1000_blocks(self) -> float:
        return self.matches * 1000 / self.blocks

    @property
    def never_true(self) -> list[LeafCount]:
        return [leaf for leaf in self.leaves if leaf.true == 0]


# ---------------------------------------------------------------------- the trigger


@dataclass(frozen=True)
class LoadedTrigger:
    compiled: CompiledTrigger
    enabled: bool
    event_signature: str  # as the user wrote it (the payload builder parses it)


async def load_trigger(conn: asyncpg.Connection, reference: str) -> LoadedTrigger:
    """The trigger ``reference`` names (an id, else a name), enabled or not, compiled.
    Raises ``BacktestError`` when there is none or it is invalid (with the reason)."""
    trigger_id = int(reference) if reference.isdigit() and len(reference) < 19 else None
    row = await conn.fetchrow(_TRIGGER, trigger_id, reference)
    if row is None:
        what = f"id {trigger_id}" if trigger_id is not None else f"name {reference!r}"
        raise BacktestError(f"no trigger with {what}")
    trigger_row = TriggerRow(
        id=row["id"], name=row["name"], chain_id=row["chain_id"], address=row["address"],
        event_signature=row["event_signature"], conditions=row["conditions"],
        confirmations=row["confirmations"], error=row["error"],
        factory_address=row["factory_address"],
        factory_event_signature=row["factory_event_signature"],
        factory_parameter=row["factory_parameter"],
        actions=tuple(zip(row["action_ids"], map(orjson.loads, row["action_configs"]),
                          strict=True)))
    try:
        compiled = compile_trigger(trigger_row)
    except InvalidTrigger as error:
        raise BacktestError(f"trigger {row['name']!r} (id {row['id']}) is invalid: {error}") from None
    return LoadedTrigger(compiled, bool(row["enabled"]), row["event_signature"])


def trigger_addresses(trigger: CompiledTrigger) -> tuple[str, ...]:
    """The contract whose logs the trigger reads, lowercase; ``()`` for any contract — and for a
    factory trigger, whose contracts are its children (:func:`children_from_db`)."""
    return (trigger.address,) if trigger.address else ()


def condition_leaves(condition: Condition | None) -> list[tuple[str, Condition]]:
    """The leaves of a condition tree with their paths (``conditions.all[1].not``)."""
    leaves: list[tuple[str, Condition]] = []

    def walk(node: Condition, path: str) -> None:
        if node.kind == "leaf":
            leaves.append((path, node))
        elif node.kind == "not":
            walk(node.children[0], f"{path}.not")
        else:
            for position, child in enumerate(node.children):
                walk(child, f"{path}.{node.kind}[{position}]")

    if condition is not None:
        walk(condition, "conditions")
    return leaves


def _leaf_text(leaf: Condition) -> str:
    assert leaf.field is not None
    operand = leaf.operand
    if isinstance(operand, frozenset):
        operand = sorted(operand, key=str)
    return f"{leaf.field.path} {leaf.op} {operand}"


# ---------------------------------------------------------------------- evaluation


class Evaluator:
    """Feeds events to the processor's matching for one trigger and keeps the report."""

    def __init__(self, trigger: CompiledTrigger, report: BacktestReport, *,
                 first_matches: int = FIRST_MATCHES, children: Mapping[str, int] | None = None
                 ) -> None:
        # A registry of this one trigger: its index and compiled conditions are the
        # processor's (``TriggerRegistry.build`` would drop a trigger without actions).
        self.registry = TriggerRegistry(triggers=(trigger,))
        self.trigger = trigger
        self.report = report
        self.keep = first_matches
        self.leaves = condition_leaves(trigger.condition)
        report.leaves = [LeafCount(path, _leaf_text(leaf)) for path, leaf in self.leaves]
        # A factory trigger: child → block it was created in; an event is a candidate only when
        # its emitter was created at or before its block (the processor's rule).
        self.children = children
        self.lookup: ChildLookup = {}
        self.factory_indexes: tuple[MatchIndex, ...] = ()
        if trigger.factory is not None:
            if children is None:
                raise ValueError("a factory trigger is evaluated with its children")
            group = self.registry.factory_groups[trigger.factory]
            self.lookup = {child: ((group, created),) for child, created in children.items()}
            self.factory_indexes = group.indexes.get(trigger.topic0, ())

    def _children_only(self, events: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        children = self.children
        if children is None:
            return events
        kept = []
        for event in events:
            created = children.get(event["address"])
            if created is not None and created <= event["block_number"]:
                kept.append(event)
        return kept

    def feed(self, events: Sequence[Mapping[str, Any]]) -> None:
        report, chain_id = self.report, self.trigger.chain_id
        events = self._children_only(events)
        if not self.leaves:
            matches_of, lookup = self.registry.matches, self.lookup
            for event in events:
                report.candidates += 1
                matched, failures = matches_of(chain_id, event, lookup)
                if matched:
                    self._matched(event)
                elif failures:
                    self._failed(event, "does not decode under the trigger's signature")
            return
        # With conditions every candidate is decoded for the per-leaf counts anyway: decode it
        # once, up front, into the memo the processor's match indexes share.
        leaves, counts, decoder = self.leaves, report.leaves, self.trigger.decoder
        indexes_of = self.registry.indexes
        for event in events:
            report.candidates += 1
            try:
                args = decoder(event["topic1"], event["topic2"], event["topic3"], event["data"])
            except DecodeError as error:
                self._failed(event, str(error))
                continue
            entries: list[Entry] = []
            decoded: DecodeMemo = {decoder: args}
            for index in (self.factory_indexes or
                          indexes_of(chain_id, event["address"], event["topic0"])):
                index.match(event, decoded, entries)
            if entries:
                self._matched(event)
            for position, (_, leaf) in enumerate(leaves):
                if leaf.predicate(args, event):
                    counts[position].true += 1

    def _matched(self, event: Mapping[str, Any]) -> None:
        self.report.matches += 1
        if len(self.report.first_matches) < self.keep:
            self.report.first_matches.append(dict(event))

    def _failed(self, event: Mapping[str, Any], reason: str) -> None:
        self.report.decode_failures += 1
        if self.report.first_decode_failure is None:
            self.report.first_decode_failure = DecodeFailure(
                event["block_number"], event["log_index"], event["tx_hash"], reason)


# ---------------------------------------------------------------------- sources


async def plan_segments(conn: asyncpg.Connection, *, chain_id: int, first: int, last: int,
                        addresses: Sequence[str], ingest_addresses: Sequence[str]) -> list[Segment]:
    """Split ``first..last`` into stored and node segments (see the module doc)."""
    checkpoint = await conn.fetchval("SELECT block_number FROM checkpoints WHERE chain_id = $1",
                                     chain_id)
    oldest = await conn.fetchval("SELECT min(block_number) FROM events WHERE chain_id = $1",
                                 chain_id)
    ingested = not ingest_addresses or (
        bool(addresses) and set(addresses) <= {a.lower() for a in ingest_addresses})
    if checkpoint is None or oldest is None or not ingested:
        return [Segment("node", first, last)]
    stored_first, stored_last = max(first, oldest), min(last, checkpoint)
    if stored_first > stored_last:
        return [Segment("node", first, last)]
    segments = []
    if first < stored_first:
        segments.append(Segment("node", first, stored_first - 1))
    segments.append(Segment("stored", stored_first, stored_last))
    if stored_last < last:
        segments.append(Segment("node", stored_last + 1, last))
    return segments


async def stored_events(conn: asyncpg.Connection, segment: Segment, *, chain_id: int,
                        topic0: str, addresses: Sequence[str]
                        ) -> AsyncIterator[tuple[int, list[asyncpg.Record]]]:
    """``(last block of the page, the trigger's valid stored events in it)``, page by page."""
    wanted = list(addresses) or None
    for low in range(segment.first, segment.last + 1, BLOCK_PAGE):
        high = min(low + BLOCK_PAGE - 1, segment.last)
        yield high, await conn.fetch(_STORED_EVENTS, chain_id, low, high, topic0, wanted)


# ---------------------------------------------------------------------- factory children


def _earliest(into: dict[str, int], found: Mapping[str, int]) -> None:
    for child, block in found.items():
        if block < into.get(child, block + 1):
            into[child] = block


async def children_from_db(conn: asyncpg.Connection, factory: Factory, segment: Segment
                           ) -> dict[str, int]:
    """Children (→ creation block) of the factory's valid creation logs stored in ``segment``:
    ``factory_children`` when the factory is registered, else the stored creation logs read
    page by page. Reads only."""
    factory_id = await conn.fetchval(_FACTORY_ID, factory.chain_id, factory.address,
                                     factory.topic0, factory.child_topic, factory.child_offset)
    if factory_id is not None:
        rows = await conn.fetch(_REGISTERED_CHILDREN, factory_id, segment.first, segment.last)
        return {row["child_address"]: row["created"] for row in rows}
    found: dict[str, int] = {}
    async for _, events in stored_events(conn, segment, chain_id=factory.chain_id,
                                         topic0=factory.topic0, addresses=(factory.address,)):
        _earliest(found, _children_of(factory, events))
    return found


async def children_from_node(factory: Factory,
                             pages: AsyncIterator[tuple[int, list[dict[str, Any]]]], *,
                             progress: ProgressCallback | None = None) -> dict[str, int]:
    """Children (→ creation block) of the factory's creation logs in ``pages``: the node's
    logs of the factory's address and creation ``topic0``, proven complete
    (``ingest.trigger_logs``), as ``(last block, logs)`` ranges."""
    found: dict[str, int] = {}
    async for last, logs in pages:
        _earliest(found, _children_of(factory, logs))
        if progress is not None:
            progress(last)
    return found


def _children_of(factory: Factory, events: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return new_children([factory], ((e["block_number"], e["address"], e["topic0"], e["topic1"],
                                     e["topic2"], e["topic3"], e["data"]) for e in events))

"""``scripts/replay.py --dry-run``: which deliveries the logs a replay would add would create.

:class:`RecordingSource` wraps the chain source used by the (read-only) dry-run replay and keeps
the logs that could match an enabled trigger (by the registry's candidate index: chain, address,
topic0); :func:`new_log_deliveries` then drops those already stored and evaluates the rest with
the processor's own :func:`processor.evaluate.evaluate_events`. New events have no deliveries yet,
so every match counts (deferred ones included: they fire once deep enough).

Factory triggers count too. The recording keeps, besides the registry's candidates, every log
of an event some factory trigger watches (its emitter may be a child) and every creation log of
a factory a trigger names. A new log's emitter is a child when ``factory_children`` says so
(creation stored, factory registered), when the factory's stored creation logs say so (a factory
no processor has registered yet: the processor derives the same children when it does), or when
a creation log fetched by this replay — stored or not, the same block included — says so; each
only from its creation block on, as the processor rules. Nothing is registered.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core.factories import Factory, new_children
from ingest.rpc import ChainSource, Header, Log
from processor.children import children_of
from processor.evaluate import evaluate_events
from processor.registry import ChildLookup, FactoryGroup, TriggerRegistry

# Children of a factory not registered yet, from its valid stored creation logs (what
# ``core.factories.register_factories`` would derive), among the given addresses.
_STORED_CHILDREN = """
SELECT c.child, min(e.block_number) AS created
FROM events e
CROSS JOIN LATERAL blockhook_child_address($4::smallint, $5::int, e.topic1, e.topic2, e.topic3,
                                           e.data) AS c(child)
WHERE e.chain_id = $1 AND e.address = $2 AND e.topic0 = $3 AND NOT e.invalidated
  AND c.child = ANY($6::text[])
GROUP BY c.child"""
_REGISTERED = """
SELECT address, topic0, child_topic, child_offset FROM factories WHERE chain_id = $1"""


class RecordingSource:
    """A ``ChainSource`` that records candidate logs and the headers it served."""

    def __init__(self, source: ChainSource, registry: TriggerRegistry, chain_id: int) -> None:
        self.source = source
        self.registry = registry
        self.chain = chain_id  # not ``chain_id``: that is the protocol's method
        self.headers_by_number: dict[int, Header] = {}
        self.candidates: dict[tuple[str, int], Log] = {}
        # Factory triggers: the events they watch (any emitter) and their factories' creations.
        self.factory_topics = registry.factory_topics.get(chain_id, frozenset())
        self.creation_keys = {(f.address, f.topic0) for f in registry.factories
                              if f.chain_id == chain_id}
        self.creations: dict[tuple[str, int], Log] = {}

    async def chain_id(self) -> int:
        return await self.source.chain_id()

    async def head(self) -> int:
        return await self.source.head()

    async def tagged_header(self, tag: str) -> Header | None:
        return await self.source.tagged_header(tag)

    async def headers(self, numbers: Sequence[int]) -> list[Header | None]:
        headers = await self.source.headers(numbers)
        for header in headers:
            if header is not None:
                self.headers_by_number[header.number] = header
        return headers

    async def logs(self, first: int, last: int, addresses: Sequence[str] = (), *,
                   topic0: str | None = None) -> list[Log]:
        return self._record(await self.source.logs(first, last, addresses, topic0=topic0))

    async def logs_by_hash(self, block_hash: str, addresses: Sequence[str] = (), *,
                           topic0: str | None = None) -> list[Log]:
        return self._record(await self.source.logs_by_hash(block_hash, addresses, topic0=topic0))

    async def logs_by_hashes(self, block_hashes: Sequence[str], addresses: Sequence[str] = (), *,
                             topic0: str | None = None) -> list[list[Log] | Exception]:
        answers = await self.source.logs_by_hashes(block_hashes, addresses, topic0=topic0)
        for answer in answers:
            if isinstance(answer, list):
                self._record(answer)
        return answers

    def _record(self, logs: list[Log]) -> list[Log]:
        candidates, factory_topics = self.registry.candidates, self.factory_topics
        for entry in logs:
            if candidates(self.chain, entry.address, entry.topic0) or (
                    factory_topics and entry.topic0 in factory_topics):
                self.candidates[(entry.block_hash, entry.log_index)] = entry
            if self.creation_keys and (entry.address, entry.topic0) in self.creation_keys:
                self.creations[(entry.block_hash, entry.log_index)] = entry
        return logs

    def _canonical(self, logs: dict[tuple[str, int], Log]) -> list[tuple[Log, datetime]]:
        kept = []
        for entry in logs.values():
            header = self.headers_by_number.get(entry.block_number)
            if header is not None and header.hash == entry.block_hash:
                kept.append((entry, datetime.fromtimestamp(header.timestamp, UTC)))
        return kept

    def canonical_candidates(self) -> list[tuple[Log, datetime]]:
        """Recorded candidates whose block is the last one served at its height (a range
        fetched again after the node moved replaces the abandoned branch)."""
        return self._canonical(self.candidates)

    def fetched_children(self) -> dict[Factory, dict[str, int]]:
        """Per factory, the children its canonical creation logs fetched here created (→ the
        block of the first creation)."""
        logs = [entry for entry, _ in self._canonical(self.creations)]
        found: dict[Factory, dict[str, int]] = {}
        for factory in self.registry.factories:
            if factory.chain_id == self.chain:
                children = new_children([factory], (
                    (e.block_number, e.address, e.topic0, e.topic1, e.topic2, e.topic3, e.data)
                    for e in logs))
                if children:
                    found[factory] = children
        return found


async def _children(conn: asyncpg.Connection, recording: RecordingSource,
                    registry: TriggerRegistry, events: list[dict[str, Any]]) -> ChildLookup:
    """The factory children among ``events``' emitters: stored (``factory_children``, or an
    unregistered factory's stored creation logs) and created by the logs this replay fetched."""
    if not registry.factory_topics.get(recording.chain):
        return {}
    merged: dict[str, dict[int, tuple[FactoryGroup, int]]] = {}  # child → id(group) → …

    def add(child: str, group: FactoryGroup | None, created: int) -> None:
        if group is not None:
            by_group = merged.setdefault(child, {})
            known = by_group.get(id(group))
            if known is None or created < known[1]:
                by_group[id(group)] = (group, created)

    for child, created_by in (await children_of(conn, registry, chain_id=recording.chain,
                                                events=events)).items():
        for group, created in created_by:
            add(child, group, created)
    emitters = sorted({event["address"] for event in events})
    registered = {Factory(recording.chain, row["address"], row["topic0"], row["child_topic"],
                          row["child_offset"])
                  for row in await conn.fetch(_REGISTERED, recording.chain)}
    for factory in registry.factories:
        if factory.chain_id == recording.chain and factory not in registered:
            for row in await conn.fetch(_STORED_CHILDREN, factory.chain_id, factory.address,
                                        factory.topic0, factory.child_topic,
                                        factory.child_offset, emitters):
                add(row["child"], registry.factory_groups.get(factory), row["created"])
    for factory, children in recording.fetched_children().items():
        for child, created in children.items():
            add(child, registry.factory_groups.get(factory), created)
    return {child: tuple(by_group.values()) for child, by_group in merged.items()}


async def new_log_deliveries(conn: asyncpg.Connection, recording: RecordingSource,
                             registry: TriggerRegistry) -> dict[int, int]:
    """Trigger id → deliveries the candidate logs not stored as valid events would create (an
    invalidated twin does not count: the returning log is stored again as a new event)."""
    candidates = recording.canonical_candidates()
    if not candidates:
        return {}
    stored = await conn.fetch(
        """SELECT e.block_hash, e.log_index FROM events e
           JOIN unnest($2::text[], $3::int[], $4::timestamptz[]) AS c(block_hash, log_index, t)
             ON e.block_hash = c.block_hash AND e.log_index = c.log_index AND e.block_time = c.t
           WHERE e.chain_id = $1 AND NOT e.invalidated""",
        recording.chain, [log.block_hash for log, _ in candidates],
        [log.log_index for log, _ in candidates], [time for _, time in candidates])
    have = {(row["block_hash"], row["log_index"]) for row in stored}
    events: list[dict[str, Any]] = [
        {"id": n, "block_number": log.block_number, "block_time": time, "tx_hash": log.tx_hash,
         "log_index": log.log_index, "address": log.address, "topic0": log.topic0,
         "topic1": log.topic1, "topic2": log.topic2, "topic3": log.topic3, "data": log.data}
        for n, (log, time) in enumerate(candidates) if (log.block_hash, log.log_index) not in have
    ]
    checkpoint = await conn.fetchval("SELECT block_number FROM checkpoints WHERE chain_id = $1",
                                     recording.chain)
    children = await _children(conn, recording, registry, events)
    evaluation = evaluate_events(events, registry, chain_id=recording.chain,
                                 checkpoint=checkpoint, children=children)
    return dict(evaluation.per_trigger)

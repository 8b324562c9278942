"""The in-memory trigger registry: enabled triggers with their enabled actions, validated and
compiled once per load, grouped by ``(chain_id, address or None, topic0)`` for O(1) candidate
lookup per event, and within each group indexed by condition (``processor.index``) so the cost
of matching an event does not grow with the number of triggers on its contract and event.

A factory trigger (``triggers.factory_*``, ``core.factories``) is grouped by ``(factory,
topic0)`` instead: an event is its candidate when its emitter is a child the factory created at or
before the event's block. The children of a page's emitters come from ``processor.children``
(one query per page); the lookup per event is one dict access. Loading the registry registers the
factories its triggers name (``core.factories.register_factories``).

An invalid trigger (unparseable signature, bad condition, bad action config) is skipped; its
reason is written to ``triggers.error`` only when it changed (so each reason is logged once across
any number of processors) and cleared when the trigger is fixed.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from core.abi import DecodeError, EventSignature, LogDecoder, log_decoder, parse_event_signature
from core.errors import InvalidTrigger
from core.factories import Factory, factory_of, register_factories
from processor.conditions import Condition, Predicate, always, compile_condition_tree
from processor.index import UNDECODABLE, DecodeMemo, Entry, MatchIndex


@dataclass(frozen=True, slots=True)
class FactoryGroup:
    """The triggers watching one factory's children, by ``topic0`` (and their match indexes)."""

    factory: Factory
    triggers: Mapping[str, tuple[CompiledTrigger, ...]]
    indexes: Mapping[str, tuple[MatchIndex, ...]]


# Child address → (its factory's group, block it was created in) for the emitters of a page of
# events (``processor.children``); empty when no factory trigger watches the chain.
ChildLookup = Mapping[str, tuple[tuple[FactoryGroup, int], ...]]
NO_CHILDREN: ChildLookup = {}

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"


class WebhookConfig(BaseModel):
    """``actions.config`` of a webhook action (docs/reference.md, Triggers and actions). Unknown keys are refused so a typo
    (``secert``) cannot silently send unsigned webhooks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: StrictStr
    # The database moves ``secret`` out of ``config`` as it is written (migration 0003), so
    # the processor only sees one here where that trigger is absent.
    secret: StrictStr | None = None
    headers: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    timeout: Annotated[float, Field(gt=0, strict=True)] | None = None
    # Seconds a replaced secret keeps signing (endpoint secret rotation); applied by the database.
    previous_secret_ttl: Annotated[float, Field(ge=0, strict=True)] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url scheme {parts.scheme or '(none)'!r} is not http or https")
        if not parts.hostname:
            raise ValueError("url has no host")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(SECRET_PREFIX):
            raise ValueError(f"secret must start with {SECRET_PREFIX!r}")
        encoded = value[len(SECRET_PREFIX):]
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"secret after {SECRET_PREFIX!r} is not valid base64") from None
        if not key:
            raise ValueError("secret is empty")
        return value


@dataclass(frozen=True, eq=False)
class CompiledTrigger:
    """A valid, enabled trigger ready for evaluation (identity-compared, never mutated)."""

    id: int
    name: str
    chain_id: int
    address: str | None
    signature: EventSignature
    topic0: str
    decoder: LogDecoder
    condition: Condition | None  # None: no conditions
    predicate: Predicate  # the whole condition: what "matches" means
    confirmations: int
    action_ids: tuple[int, ...]
    # A factory trigger watches the factory's children instead of one address (``address`` is
    # then None and the trigger is no wildcard).
    factory: Factory | None = None


@dataclass(frozen=True)
class TriggerRow:
    """One ``triggers`` row with its enabled actions, as loaded."""

    id: int
    name: str
    chain_id: int
    address: str | None
    event_signature: str
    conditions: Any
    confirmations: int
    error: str | None
    actions: tuple[tuple[int, Any], ...]  # (action id, config)
    factory_address: str | None = None
    factory_event_signature: str | None = None
    factory_parameter: str | None = None


def _action_error(action_id: int, config: Any) -> str | None:
    if not isinstance(config, Mapping):
        return f"action {action_id}: config must be a JSON object"
    try:
        WebhookConfig.model_validate(config)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or 'config'}: "
            f"{item['msg'].removeprefix('Value error, ')}" for item in error.errors())
        return f"action {action_id}: {problems}"
    return None


def compile_trigger(row: TriggerRow) -> CompiledTrigger:
    """Validate and compile one trigger; raise ``InvalidTrigger`` with a reason for the user."""
    signature = parse_event_signature(row.event_signature)
    condition = compile_condition_tree(row.conditions, signature)
    factory = None
    if row.factory_address is not None:
        if row.address is not None:  # the database refuses this too (address_or_factory)
            raise InvalidTrigger("a trigger names an address or a factory, not both")
        if row.factory_event_signature is None or row.factory_parameter is None:
            raise InvalidTrigger("a factory needs factory_event_signature and factory_parameter")
        factory = factory_of(row.chain_id, row.factory_address, row.factory_event_signature,
                             row.factory_parameter)
    for action_id, config in row.actions:
        if (problem := _action_error(action_id, config)) is not None:
            raise InvalidTrigger(problem)
    return CompiledTrigger(
        id=row.id, name=row.name, chain_id=row.chain_id,
        address=row.address.lower() if row.address else None,
        signature=signature, topic0=signature.topic0, decoder=log_decoder(signature),
        condition=condition, predicate=always if condition is None else condition.predicate,
        confirmations=row.confirmations,
        action_ids=tuple(action_id for action_id, _ in row.actions), factory=factory,
    )


# Wildcard (any address) triggers come after the exact ones of an event, as they always have;
# factory triggers between the two.
_FACTORY_ORDINAL = 1 << 39
_WILDCARD_ORDINAL = 1 << 40


def _match_indexes(triggers: list[CompiledTrigger], first_ordinal: int
                   ) -> tuple[MatchIndex, ...]:
    by_decoder: dict[LogDecoder, list[tuple[int, CompiledTrigger]]] = defaultdict(list)
    for position, trigger in enumerate(triggers):
        by_decoder[trigger.decoder].append((first_ordinal + position, trigger))
    return tuple(MatchIndex(group) for group in by_decoder.values())


def _ordinal(entry: Entry) -> int:
    return entry.ordinal


T = TypeVar("T")


def _exact_then_wildcard(exact: Mapping[tuple[int, str, str], tuple[T, ...]],
                         wildcard: Mapping[tuple[int, str], tuple[T, ...]], chain_id: int,
                         address: str, topic0: str | None) -> tuple[T, ...]:
    """What is registered for this address, then for any address (``address`` lowercase)."""
    if topic0 is None:
        return ()
    found = exact.get((chain_id, address, topic0), ())
    more = wildcard.get((chain_id, topic0), ())
    if not more:
        return found
    return found + more if found else more


@dataclass
class TriggerRegistry:
    """Candidate lookup by ``(chain, address, topic0)``, then the match indexes of those
    candidates. ``matches`` is what the processor uses; ``reference_matches`` evaluates every
    candidate's whole predicate and is the definition ``matches`` is tested against."""

    triggers: tuple[CompiledTrigger, ...] = ()
    invalid: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        exact: dict[tuple[int, str, str], list[CompiledTrigger]] = defaultdict(list)
        wildcard: dict[tuple[int, str], list[CompiledTrigger]] = defaultdict(list)
        by_factory: dict[tuple[Factory, str], list[CompiledTrigger]] = defaultdict(list)
        for trigger in self.triggers:
            if trigger.factory is not None:
                by_factory[(trigger.factory, trigger.topic0)].append(trigger)
            elif trigger.address is None:
                wildcard[(trigger.chain_id, trigger.topic0)].append(trigger)
            else:
                exact[(trigger.chain_id, trigger.address, trigger.topic0)].append(trigger)
        self._exact = {key: tuple(value) for key, value in exact.items()}
        self._wildcard = {key: tuple(value) for key, value in wildcard.items()}
        self._exact_indexes = {key: _match_indexes(value, 0) for key, value in exact.items()}
        self._wildcard_indexes = {key: _match_indexes(value, _WILDCARD_ORDINAL)
                                  for key, value in wildcard.items()}
        triggers_of: dict[Factory, dict[str, tuple[CompiledTrigger, ...]]] = defaultdict(dict)
        indexes_of: dict[Factory, dict[str, tuple[MatchIndex, ...]]] = defaultdict(dict)
        for (factory, topic0), grouped in by_factory.items():
            triggers_of[factory][topic0] = tuple(grouped)
            indexes_of[factory][topic0] = _match_indexes(grouped, _FACTORY_ORDINAL)
        self.factory_groups = {factory: FactoryGroup(factory, triggers_of[factory],
                                                     indexes_of[factory])
                               for factory in triggers_of}
        # The factories triggers name, and per chain the events whose emitters may be children.
        self.factories = frozenset(self.factory_groups)
        # factories.id → group (None: a registered factory no trigger names); filled by
        # processor.children as ids are met (rows of ``factories`` never change).
        self.groups_by_factory_id: dict[int, FactoryGroup | None] = {}
        factory_topics: dict[int, set[str]] = defaultdict(set)
        for factory, topic0 in by_factory:
            factory_topics[factory.chain_id].add(topic0)
        self.factory_topics = {chain: frozenset(topics) for chain, topics in factory_topics.items()}
        self.by_id = {trigger.id: trigger for trigger in self.triggers}
        # Only triggers with confirmations need the chain's checkpoint while evaluating.
        self.needs_checkpoints = any(trigger.confirmations for trigger in self.triggers)

    def candidates(self, chain_id: int, address: str, topic0: str | None,
                   children: ChildLookup = NO_CHILDREN, block_number: int = 0
                   ) -> tuple[CompiledTrigger, ...]:
        """Triggers whose (chain, address, topic0) fit the event; ``address`` lowercase. With
        ``children``, also the factory triggers of the factories that created ``address`` at or
        before ``block_number``."""
        if not children or topic0 is None or address not in children:
            return _exact_then_wildcard(self._exact, self._wildcard, chain_id, address, topic0)
        # In registry order: exact, then factory, then wildcard triggers.
        found = self._exact.get((chain_id, address, topic0), ())
        for group, created in children[address]:
            if created <= block_number:
                found += group.triggers.get(topic0, ())
        return found + self._wildcard.get((chain_id, topic0), ())

    def indexes(self, chain_id: int, address: str, topic0: str | None
                ) -> tuple[MatchIndex, ...]:
        """The match indexes holding the candidates of ``(chain, address, topic0)``: the lookup
        every other way of naming contracts (e.g. a factory's children) plugs into."""
        return _exact_then_wildcard(self._exact_indexes, self._wildcard_indexes, chain_id,
                                    address, topic0)

    def matches(self, chain_id: int, event: Mapping[str, Any],
                children: ChildLookup = NO_CHILDREN) -> tuple[list[CompiledTrigger], int]:
        """The triggers ``event`` matches, in registry order, and the decode failures met.
        ``children``: the factory children among the events' emitters (``processor.children``),
        one dict lookup per event."""
        indexes = self.indexes(chain_id, event["address"], event["topic0"])
        if children:
            created_by = children.get(event["address"])
            if created_by is not None:
                indexes = self._with_factories(indexes, created_by, event)
        if not indexes:
            return [], 0
        matched: list[Entry] = []
        decoded: DecodeMemo = {}
        failures = 0
        for index in indexes:
            failures += index.match(event, decoded, matched)
        if len(matched) > 1:
            matched.sort(key=_ordinal)
        return [entry.trigger for entry in matched], failures

    def _with_factories(self, indexes: tuple[MatchIndex, ...],
                        created_by: tuple[tuple[FactoryGroup, int], ...],
                        event: Mapping[str, Any]) -> tuple[MatchIndex, ...]:
        topic0 = event["topic0"]
        for group, created in created_by:
            if created <= event["block_number"]:
                more = group.indexes.get(topic0)
                if more:
                    indexes = indexes + more
        return indexes

    def reference_matches(self, chain_id: int, event: Mapping[str, Any],
                          children: ChildLookup = NO_CHILDREN
                          ) -> tuple[list[CompiledTrigger], int]:
        """``matches`` by definition: every candidate, the log decoded once per signature, the
        whole predicate (the evaluator before the index; kept as the tests' reference)."""
        matched: list[CompiledTrigger] = []
        decoded: DecodeMemo = {}
        failures = 0
        for trigger in self.candidates(chain_id, event["address"], event["topic0"], children,
                                       event["block_number"]):
            args = decoded.get(trigger.decoder)
            if args is None:
                try:
                    args = trigger.decoder(event["topic1"], event["topic2"], event["topic3"],
                                           event["data"])
                except DecodeError:
                    args = UNDECODABLE
                    failures += 1
                decoded[trigger.decoder] = args
            if args is not UNDECODABLE and trigger.predicate(args, event):
                matched.append(trigger)
        return matched, failures

    @classmethod
    def build(cls, rows: Iterable[TriggerRow]) -> TriggerRegistry:
        """Compile every row; invalid ones land in ``invalid`` (id → reason)."""
        compiled: list[CompiledTrigger] = []
        invalid: dict[int, str] = {}
        for row in rows:
            try:
                trigger = compile_trigger(row)
            except InvalidTrigger as error:
                invalid[row.id] = str(error)
                continue
            if trigger.action_ids:
                compiled.append(trigger)
        return cls(triggers=tuple(compiled), invalid=invalid)


_LOAD_TRIGGERS = """
SELECT t.id, t.name, t.chain_id, t.address, t.event_signature, t.conditions, t.confirmations,
       t.error, t.factory_address, t.factory_event_signature, t.factory_parameter,
       coalesce(array_agg(a.id ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL), '{}') AS action_ids,
       coalesce(array_agg(a.config::text ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL), '{}')
           AS action_configs
FROM triggers t
LEFT JOIN actions a ON a.trigger_id = t.id AND a.enabled
WHERE t.enabled
GROUP BY t.id
ORDER BY t.id
"""

# Only changed reasons are written: the RETURNING rows are exactly the news worth logging.
_WRITE_ERRORS = """
UPDATE triggers t SET error = u.error
FROM unnest($1::bigint[], $2::text[]) AS u(id, error)
WHERE t.id = u.id AND t.error IS DISTINCT FROM u.error
RETURNING t.id, t.name, u.error
"""


async def fetch_trigger_rows(conn: asyncpg.Connection) -> list[TriggerRow]:
    """Enabled triggers with their enabled actions (configs as parsed JSON)."""
    rows = await conn.fetch(_LOAD_TRIGGERS)
    return [
        TriggerRow(
            id=row["id"], name=row["name"], chain_id=row["chain_id"], address=row["address"],
            event_signature=row["event_signature"], conditions=row["conditions"],
            confirmations=row["confirmations"], error=row["error"],
            factory_address=row["factory_address"],
            factory_event_signature=row["factory_event_signature"],
            factory_parameter=row["factory_parameter"],
            actions=tuple(zip(row["action_ids"],
                              (orjson.loads(text) for text in row["action_configs"]), strict=True)),
        )
        for row in rows
    ]


async def load_registry(conn: asyncpg.Connection) -> TriggerRegistry:
    """Load, compile and index the enabled triggers; record changed ``triggers.error`` values
    (set for invalid triggers, cleared for valid ones) and log each change once."""
    rows = await fetch_trigger_rows(conn)
    registry = TriggerRegistry.build(rows)
    registered = await register_factories(conn, registry.factories)
    if registered:
        log.info("factories registered", factories=registered)
    changed = [(row.id, registry.invalid.get(row.id)) for row in rows
               if registry.invalid.get(row.id) != row.error]
    if changed:
        written = await conn.fetch(_WRITE_ERRORS, [c[0] for c in changed], [c[1] for c in changed])
        for row in written:
            if row["error"] is None:
                log.info("trigger valid again", trigger_id=row["id"], trigger=row["name"])
            else:
                log.warning("trigger invalid, skipped", trigger_id=row["id"], trigger=row["name"],
                            reason=row["error"])
    return registry

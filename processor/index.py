"""The matching index: which triggers of one ``(chain, address or any, topic0, signature)`` an
event matches, without evaluating every trigger.

Each trigger's condition is read as a conjunction (nested ``all``s flattened) and one conjunct
becomes its *key*, chosen at load:

- ``eq`` / ``in`` on a scalar field (integer, address, hex, bytes, bool, string), or an ``any``
  of such leaves on one field → hash keys: a dict from value to triggers, one lookup per event;
- ``gt`` / ``gte`` / ``lt`` / ``lte`` on an integer field, or their ``not`` on a field that is
  never absent (every such conjunct on that field, combined into one closed interval) → an
  interval index, one stab per event (``processor.intervals``);
- nothing indexable (``ne``, ``nin``, ``contains``, ``exists``, other ``not``s, ``any`` of mixed
  leaves, fixed-point fields, array equality, no conditions) → the trigger is *unkeyed*.

An event is judged by its key fields alone; only the triggers their lookups admit, plus the
unkeyed ones, go further: the log is decoded (once per signature and event) and each trigger's
*residual* — its other conjuncts — is evaluated. A key field that is a top-level parameter of a
word-sliced signature (``Transfer``'s ``to``, ``value``) is read alone
(``core.abi.field_reader``), so an event no trigger admits is never decoded whole.

The result is exactly the trigger's compiled predicate on the decoded log (``MatchIndex`` is
property-tested against it): the key conjunct holds iff its lookup admits the trigger, the
residual is the rest of the conjunction, a log that does not decode matches nothing (the
reader fails only where the whole decode fails, and an admitted log is decoded before it
counts), and a path absent from the log is admitted by no key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.abi import DecodeError, FieldReader, LogDecoder, field_reader
from processor.conditions import MISSING, Condition, Field, Predicate, all_of
from processor.intervals import IntervalIndex

if TYPE_CHECKING:
    from processor.registry import CompiledTrigger

# Decoded args, or UNDECODABLE, per decoder, for one event (shared by the indexes it meets).
DecodeMemo = dict[LogDecoder, Any]
UNDECODABLE: Any = object()

_HASHED_KINDS = frozenset({"int", "address", "hex", "bytes", "bool", "string"})
_NO_ARGS: Mapping[str, Any] = {}


class Entry:
    """One trigger in an index: ``ordinal`` orders matches as the registry lists triggers;
    ``residual`` is what remains to check once the key admitted it (``None``: nothing)."""

    __slots__ = ("ordinal", "trigger", "residual")

    def __init__(self, ordinal: int, trigger: CompiledTrigger, residual: Predicate | None) -> None:
        self.ordinal = ordinal
        self.trigger = trigger
        self.residual = residual


@dataclass(frozen=True, eq=False)
class _Key:
    field: Field
    values: frozenset[Any] | None  # hash keys; None for an interval
    low: int | None = None
    high: int | None = None


def _conjuncts(condition: Condition) -> list[Condition]:
    """The conjunction a condition is: nested ``all``s flattened; a one-member ``any`` is its
    member (the compiled predicate is that member's)."""
    if condition.kind == "all" or (condition.kind == "any" and len(condition.children) == 1):
        return [part for child in condition.children for part in _conjuncts(child)]
    return [condition]


def _hash_values(condition: Condition) -> tuple[Field, frozenset[Any]] | None:
    """The field and values an ``eq``/``in`` leaf (or an ``any`` of them on one field) holds for."""
    if condition.kind == "leaf":
        assert condition.field is not None
        if condition.field.type.kind not in _HASHED_KINDS:
            return None
        if condition.op == "eq":
            return condition.field, frozenset((condition.operand,))
        if condition.op == "in":
            return condition.field, condition.operand
        return None
    if condition.kind == "any" and condition.children:
        fields: dict[str, Field] = {}
        values: set[Any] = set()
        for child in condition.children:
            part = _hash_values(child)
            if part is None:
                return None
            fields[part[0].path] = part[0]
            values |= part[1]
        if len(fields) != 1:
            return None
        (field,) = fields.values()
        return field, frozenset(values)
    return None


# Offsets from b of the closed interval an ordered comparison with b holds on (None: unbounded):
# ``gt b`` holds on [b + 1, ∞), ``lte b`` on (-∞, b].
_BOUNDS = {"gt": (1, None), "gte": (0, None), "lt": (None, -1), "lte": (None, 0)}
_NEGATED = {"gt": "lte", "gte": "lt", "lt": "gte", "lte": "gt"}


def _bound(condition: Condition) -> tuple[Field, int | None, int | None] | None:
    """The interval an ordered comparison on an integer field holds on, also under a ``not``
    when the field is never absent (not nested: ``not value < b`` is ``value >= b``; a nested
    path may be absent, where ``not`` holds and no interval does)."""
    negated = condition.kind == "not"
    leaf = condition.children[0] if negated else condition
    if (leaf.kind != "leaf" or leaf.op not in _BOUNDS or leaf.field is None
            or leaf.field.type.kind != "int" or (negated and leaf.field.nested)):
        return None
    low, high = _BOUNDS[_NEGATED[leaf.op] if negated else leaf.op]
    bound = leaf.operand
    return (leaf.field, None if low is None else bound + low,
            None if high is None else bound + high)


class _Probe:
    """One key field of a signature's triggers and its lookup (a hash table or intervals)."""

    __slots__ = ("get", "reader", "needs_args", "table", "intervals")

    def __init__(self, field: Field, reader: FieldReader | None) -> None:
        self.get = field.get
        self.reader = reader
        self.needs_args = field.argument is not None and reader is None
        self.table: dict[Any, tuple[Entry, ...]] | None = None
        self.intervals: IntervalIndex[Entry] | None = None


class MatchIndex:
    """The triggers of one ``(chain, address or any, topic0)`` that share one signature."""

    def __init__(self, triggers: Sequence[tuple[int, CompiledTrigger]]) -> None:
        """``triggers``: (ordinal, trigger) pairs, all of one signature (one decoder)."""
        self.triggers = tuple(trigger for _, trigger in triggers)
        first = self.triggers[0]
        self.decoder = first.decoder
        self.signature = first.signature
        self._readers: dict[str, FieldReader | None] = {}
        hashed: dict[str, tuple[Field, dict[Any, list[Entry]]]] = {}
        ranged: dict[str, tuple[Field, list[tuple[int | None, int | None, Entry]]]] = {}
        unkeyed: list[Entry] = []
        for ordinal, trigger in triggers:
            if trigger.decoder is not self.decoder:
                raise ValueError("a MatchIndex holds triggers of one signature")
            key, residual = self._key(trigger.condition)
            entry = Entry(ordinal, trigger, residual)
            if key is None:
                unkeyed.append(entry)
            elif key.values is not None:
                table = hashed.setdefault(key.field.path, (key.field, defaultdict(list)))[1]
                for value in key.values:
                    table[value].append(entry)
            else:
                ranged.setdefault(key.field.path, (key.field, []))[1].append(
                    (key.low, key.high, entry))
        probes = []
        for field, table in hashed.values():
            probe = self._probe(field)
            probe.table = {value: tuple(entries) for value, entries in table.items()}
            probes.append(probe)
        for field, intervals in ranged.values():
            probe = self._probe(field)
            probe.intervals = IntervalIndex(intervals)
            probes.append(probe)
        # Probes that need no decoded args first: an event they reject is never decoded.
        probes.sort(key=lambda probe: probe.needs_args)
        self.probes = tuple(probes)
        self.unkeyed = tuple(unkeyed)

    def _reader(self, field: Field) -> FieldReader | None:
        """The reader of a top-level decoded argument, when the signature has one."""
        if field.argument is None or field.nested:
            return None
        if field.argument not in self._readers:
            self._readers[field.argument] = field_reader(self.signature, field.argument)
        return self._readers[field.argument]

    def _probe(self, field: Field) -> _Probe:
        return _Probe(field, self._reader(field))

    def _cost(self, field: Field) -> int:
        """0: an event column; 1: one parameter read alone; 2: needs the whole log decoded."""
        if field.argument is None:
            return 0
        return 1 if self._reader(field) is not None else 2

    def _key(self, condition: Condition | None) -> tuple[_Key | None, Predicate | None]:
        """Choose the conjunct to index (cheapest field first, a hash before an interval);
        return it with the residual predicate of the other conjuncts."""
        if condition is None:
            return None, None
        conjuncts = _conjuncts(condition)
        options: list[tuple[tuple[int, int, int], _Key, list[Condition]]] = []
        for conjunct in conjuncts:
            hashed = _hash_values(conjunct)
            if hashed is not None:
                field, values = hashed
                options.append(((self._cost(field), 0, len(values)), _Key(field, values),
                                [conjunct]))
        by_path: dict[str, tuple[Field, list[tuple[Condition, int | None, int | None]]]] = {}
        for conjunct in conjuncts:
            if (bound := _bound(conjunct)) is not None:
                field, low, high = bound
                by_path.setdefault(field.path, (field, []))[1].append((conjunct, low, high))
        for field, bounds in by_path.values():
            lows = [low for _, low, _ in bounds if low is not None]
            highs = [high for _, _, high in bounds if high is not None]
            key = _Key(field, None, max(lows) if lows else None, min(highs) if highs else None)
            options.append(((self._cost(field), 1, 0), key, [part for part, _, _ in bounds]))
        if not options:
            return None, condition.predicate
        _, key, consumed = min(options, key=lambda option: option[0])
        used = {id(conjunct) for conjunct in consumed}
        rest = [conjunct.predicate for conjunct in conjuncts if id(conjunct) not in used]
        return key, all_of(rest) if rest else None

    def match(self, event: Mapping[str, Any], decoded: DecodeMemo, out: list[Entry]) -> int:
        """Append to ``out`` the entries whose trigger matches ``event``; return the number of
        decode failures met (0 or 1). ``decoded`` is the event's memo across indexes."""
        decoder = self.decoder
        args = decoded.get(decoder)
        if args is UNDECODABLE:
            return 0
        admitted: list[Entry] = []
        try:
            if args is None and self.unkeyed:
                # Unkeyed triggers need the whole log anyway: decode first, read keys from it.
                args = decoded[decoder] = decoder(event["topic1"], event["topic2"],
                                                  event["topic3"], event["data"])
            for probe in self.probes:
                if args is not None:
                    value = probe.get(args, event)
                elif probe.reader is not None:
                    value = probe.reader(event["topic1"], event["topic2"], event["topic3"],
                                         event["data"])
                elif probe.needs_args:
                    args = decoded[decoder] = decoder(event["topic1"], event["topic2"],
                                                      event["topic3"], event["data"])
                    value = probe.get(args, event)
                else:
                    value = probe.get(_NO_ARGS, event)
                table = probe.table
                if table is not None:
                    hits = table.get(value)
                    if hits:
                        admitted.extend(hits)
                elif value is not MISSING:
                    admitted.extend(probe.intervals.stab(value))  # type: ignore[union-attr]
            if self.unkeyed:
                admitted.extend(self.unkeyed)
            if not admitted:
                return 0
            if args is None:
                args = decoded[decoder] = decoder(event["topic1"], event["topic2"],
                                                  event["topic3"], event["data"])
        except DecodeError:
            decoded[decoder] = UNDECODABLE
            return 1
        for entry in admitted:
            residual = entry.residual
            if residual is None or residual(args, event):
                out.append(entry)
        return 0

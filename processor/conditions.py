"""Trigger conditions (docs/reference.md, Triggers and actions) compiled once, at load time, into plain closures.

Grammar: ``{"all": [C, ...]}``, ``{"any": [C, ...]}``, ``{"not": C}`` or a leaf
``{"field": F, "op": OP, "value": V}``. ``F`` is a decoded argument (``value``), a path into
tuples and arrays (``order.maker``, ``ids.0``, ``order.1``) or an event field (``address``,
``block_number``, ``tx_hash``, ``log_index``; a decoded argument of the same name wins).

Everything that can be checked without an event is checked by :func:`compile_conditions`, which
raises ``InvalidTrigger`` naming the offending node: unknown fields and operators, operators that
do not apply to the field's type (``gt`` on an address), values that do not fit it (a
non-numeric value for an integer compare, a malformed address). A compiled predicate never
raises on a decoded log: a path that does not exist in this log (index past the end of a dynamic
array) makes every operator false except ``exists``.

Value semantics: integers compare exactly (JSON number, decimal string or ``0x`` hex string);
addresses and hex compare case-insensitively; ``bytes`` values are ``0x`` hex; ``in``/``nin``
take a list; ``contains`` is substring (string), sub-sequence (bytes) or membership (array);
``exists`` takes an optional boolean (default ``true``).

Besides its predicate, a compiled condition keeps its tree (:class:`Condition`): which field each
leaf reads, its operator and normalised operand. ``processor.index`` builds its hash and interval
lookups from that; the predicate stays the definition of what matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from core.abi import EventSignature, FieldType, arg_name, field_type, param_type
from core.errors import InvalidTrigger

# (decoded args, event row) → bool. The event row is any mapping with the event fields.
Predicate = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
Getter = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]

OPERATORS = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "contains", "exists"})
EVENT_FIELDS = ("address", "block_number", "tx_hash", "log_index")

# What a getter returns for a path absent from this log (an index past a dynamic array's end).
MISSING: Any = object()
_DECIMAL = re.compile(r"^-?[0-9]+$")
_HEX_NUMBER = re.compile(r"^0[xX][0-9a-fA-F]+$")
_HEX_BYTES = re.compile(r"^0[xX]([0-9a-fA-F]{2})*$")
_ADDRESS = re.compile(r"^0[xX][0-9a-fA-F]{40}$")
_ORDERED = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True, eq=False)
class Field:
    """A resolved ``field`` path: ``get(args, event)`` returns its value or ``MISSING``."""

    path: str
    get: Getter
    type: FieldType
    argument: str | None  # the decoded argument the path starts at; None for an event field
    nested: bool  # goes into a tuple or array (``order.amount``, ``ids.0``)


@dataclass(frozen=True, eq=False)
class Condition:
    """A compiled, validated condition node. ``predicate`` decides; the rest describes the node
    for the matching index: ``children`` of ``all``/``any``/``not``, and for a leaf its
    ``field``, ``op`` and ``operand`` (the normalised value: a scalar for ``eq``/``ne`` and the
    ordered operators, a frozenset for ``in``/``nin``, the wanted boolean for ``exists``)."""

    kind: Literal["all", "any", "not", "leaf"]
    predicate: Predicate
    children: tuple[Condition, ...] = ()
    field: Field | None = None
    op: str = ""
    operand: Any = None


_EVENT_FIELD_TYPES = {
    "address": FieldType("address", "address"),
    "block_number": FieldType("int", "uint64"),
    "tx_hash": FieldType("hex", "bytes32"),
    "log_index": FieldType("int", "uint32"),
}


def _event_getter(name: str) -> Getter:
    if name in ("address", "tx_hash"):
        return lambda args, event: event[name].lower()
    return lambda args, event: event[name]


def _resolve(path: str, signature: EventSignature, where: str) -> Field:
    """Compile a dotted path into a getter returning the value or ``MISSING``."""
    if not isinstance(path, str) or not path:
        raise InvalidTrigger(f"{where}: 'field' must be a non-empty string")
    head, *rest = path.split(".")
    params = signature.params_by_name
    getter: Getter
    argument: str | None = None
    if head in params:
        current = param_type(params[head])
        getter, argument = _arg_getter(head), head
    elif head in _EVENT_FIELD_TYPES:
        current, getter = _EVENT_FIELD_TYPES[head], _event_getter(head)
    else:
        known = ", ".join([*params, *EVENT_FIELDS])
        raise InvalidTrigger(f"{where}: unknown field {head!r} (known: {known})")
    for segment in rest:
        if current.kind == "array":
            if not segment.isdigit():
                raise InvalidTrigger(f"{where}: {path!r}: array index {segment!r} is not a number")
            index = int(segment)
            if current.array_size is not None and index >= current.array_size:
                raise InvalidTrigger(f"{where}: {path!r}: index {index} is past the end of "
                                     f"{current.type_str}")
            getter = _index_getter(getter, index)
            current = current.item()
        elif current.kind == "tuple":
            names = [arg_name(m, i) for i, m in enumerate(current.components)]
            if segment in names:
                index = names.index(segment)
            elif segment.isdigit() and int(segment) < len(names):
                index = int(segment)
            else:
                raise InvalidTrigger(f"{where}: {path!r}: tuple has no member {segment!r} "
                                     f"(members: {', '.join(names)})")
            member = current.components[index]
            getter = _index_getter(getter, index)
            current = field_type(member.type, member.components)
        else:
            raise InvalidTrigger(f"{where}: {path!r}: cannot go into a {current.type_str} "
                                 f"with {segment!r}")
    return Field(path, getter, current, argument, nested=bool(rest))


def _arg_getter(name: str) -> Getter:
    return lambda args, event: args[name]


def _index_getter(parent: Getter, index: int) -> Getter:
    def get(args: Mapping[str, Any], event: Mapping[str, Any]) -> Any:
        container = parent(args, event)
        if container is MISSING or index >= len(container):
            return MISSING
        return container[index]
    return get


# --- condition values ------------------------------------------------------------------------


def parse_int(value: object) -> int | None:
    """An exact integer from a JSON number, decimal string or ``0x`` hex string, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if _DECIMAL.match(text):
            return int(text)
        if _HEX_NUMBER.match(text):
            return int(text, 16)
    return None


def _scalar(ftype: FieldType, value: object, where: str) -> Any:
    """Normalise a condition value to the form decoded values of ``ftype`` take."""
    kind = ftype.kind
    if kind == "int":
        number = parse_int(value)
        if number is None:
            raise InvalidTrigger(f"{where}: {value!r} is not an integer (JSON number, decimal "
                                 f"string or 0x hex string) for a {ftype.type_str} field")
        return number
    if kind == "decimal":
        try:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise InvalidOperation
            decimal = Decimal(str(value))
            if decimal.is_nan():  # NaN is unordered: comparing it would raise on every event
                raise InvalidOperation
            return decimal
        except InvalidOperation:
            raise InvalidTrigger(f"{where}: {value!r} is not a number for a {ftype.type_str} "
                                 "field") from None
    if kind == "address":
        if not isinstance(value, str) or not _ADDRESS.match(value):
            raise InvalidTrigger(f"{where}: {value!r} is not a 0x address")
        return value.lower()
    if kind == "hex":
        if not isinstance(value, str) or not _HEX_BYTES.match(value):
            raise InvalidTrigger(f"{where}: {value!r} is not a 0x hex string")
        return value.lower()
    if kind == "bytes":
        if not isinstance(value, str) or not _HEX_BYTES.match(value):
            raise InvalidTrigger(f"{where}: {value!r} is not 0x hex bytes for a "
                                 f"{ftype.type_str} field")
        raw = bytes.fromhex(value[2:])
        if ftype.byte_size is not None and len(raw) != ftype.byte_size:
            raise InvalidTrigger(f"{where}: {value!r} is {len(raw)} bytes, the field is "
                                 f"{ftype.type_str}")
        return raw
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise InvalidTrigger(f"{where}: {value!r} is not a boolean")
    if kind == "string":
        if not isinstance(value, str):
            raise InvalidTrigger(f"{where}: {value!r} is not a string")
        return value
    if kind == "array":
        if not isinstance(value, list):
            raise InvalidTrigger(f"{where}: {value!r} is not a list for a {ftype.type_str} field")
        item = ftype.item()
        if ftype.array_size is not None and len(value) != ftype.array_size:
            raise InvalidTrigger(f"{where}: {ftype.type_str} has {ftype.array_size} items, "
                                 f"the value has {len(value)}")
        return tuple(_scalar(item, member, where) for member in value)
    raise InvalidTrigger(f"{where}: a {ftype.type_str} tuple can only be tested with 'exists'; "
                         "compare its members (e.g. 'order.amount')")


# --- leaves ----------------------------------------------------------------------------------


def _leaf(node: Mapping[str, Any], signature: EventSignature, where: str) -> Condition:
    unknown = set(node) - {"field", "op", "value"}
    if unknown:
        raise InvalidTrigger(f"{where}: unexpected keys {sorted(unknown)} in a condition")
    op = node.get("op")
    if op not in OPERATORS:
        raise InvalidTrigger(f"{where}: unknown operator {op!r} (one of {', '.join(sorted(OPERATORS))})")
    field = _resolve(node.get("field"), signature, where)  # type: ignore[arg-type]
    predicate, operand = _leaf_predicate(node, op, field, where)
    return Condition("leaf", predicate, field=field, op=op, operand=operand)


def _leaf_predicate(node: Mapping[str, Any], op: str, field: Field,
                    where: str) -> tuple[Predicate, Any]:
    get, ftype = field.get, field.type
    if op == "exists":
        wanted = node.get("value", True)
        if not isinstance(wanted, bool):
            raise InvalidTrigger(f"{where}: 'exists' takes true or false, not {wanted!r}")
        return (lambda args, event: (get(args, event) is not MISSING) is wanted), wanted
    if "value" not in node:
        raise InvalidTrigger(f"{where}: operator {op!r} needs a 'value'")
    value = node["value"]
    if op in _ORDERED:
        if ftype.kind not in ("int", "decimal"):
            raise InvalidTrigger(f"{where}: {op!r} needs a numeric field, "
                                 f"{node['field']!r} is {ftype.type_str}")
        bound = _scalar(ftype, value, where)
        return _ordered(op, get, bound), bound
    if op in ("eq", "ne"):
        expected = _scalar(ftype, value, where)
        if op == "eq":
            return (lambda args, event: get(args, event) == expected), expected
        return (lambda args, event: (found := get(args, event)) is not MISSING
                and found != expected), expected
    if op in ("in", "nin"):
        if not isinstance(value, list):
            raise InvalidTrigger(f"{where}: {op!r} takes a list, not {value!r}")
        if ftype.kind in ("array", "tuple"):
            raise InvalidTrigger(f"{where}: {op!r} needs a scalar field, {node['field']!r} is "
                                 f"{ftype.type_str}")
        choices = frozenset(_scalar(ftype, member, where) for member in value)
        if op == "in":
            return (lambda args, event: get(args, event) in choices), choices
        return (lambda args, event: (found := get(args, event)) is not MISSING
                and found not in choices), choices
    return _contains(get, ftype, value, where, node), value


def _ordered(op: str, get: Getter, bound: Any) -> Predicate:
    # Missing values compare false; decoded ints are ints, so no coercion on the hot path.
    if op == "gt":
        return lambda args, event: (v := get(args, event)) is not MISSING and v > bound
    if op == "gte":
        return lambda args, event: (v := get(args, event)) is not MISSING and v >= bound
    if op == "lt":
        return lambda args, event: (v := get(args, event)) is not MISSING and v < bound
    return lambda args, event: (v := get(args, event)) is not MISSING and v <= bound


def _contains(get: Getter, ftype: FieldType, value: object, where: str,
              node: Mapping[str, Any]) -> Predicate:
    if ftype.kind == "string":
        if not isinstance(value, str):
            raise InvalidTrigger(f"{where}: 'contains' on a string takes a string")
        return lambda args, event: (v := get(args, event)) is not MISSING and value in v
    if ftype.kind == "bytes":
        needle = _scalar(FieldType("bytes", "bytes"), value, where)
        return lambda args, event: (v := get(args, event)) is not MISSING and needle in v
    if ftype.kind == "hex":
        text = _scalar(ftype, value, where)[2:]
        return lambda args, event: (v := get(args, event)) is not MISSING and text in v[2:]
    if ftype.kind == "array":
        member = _scalar(ftype.item(), value, where)
        return lambda args, event: (v := get(args, event)) is not MISSING and member in v
    raise InvalidTrigger(f"{where}: 'contains' needs a string, bytes or array field, "
                         f"{node['field']!r} is {ftype.type_str}")


# --- tree ------------------------------------------------------------------------------------


def always(args: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """The predicate of a trigger without conditions."""
    return True


def _compile(node: object, signature: EventSignature, where: str, depth: int) -> Condition:
    if depth > 32:
        raise InvalidTrigger(f"{where}: conditions nested deeper than 32 levels")
    if not isinstance(node, Mapping):
        raise InvalidTrigger(f"{where}: a condition must be an object, not {type(node).__name__}")
    groups = [key for key in ("all", "any", "not") if key in node]
    if groups:
        if len(node) != 1:
            raise InvalidTrigger(f"{where}: {groups[0]!r} must be the only key of its object")
        key = groups[0]
        if key == "not":
            child = _compile(node["not"], signature, f"{where}.not", depth + 1)
            inner = child.predicate
            return Condition("not", lambda args, event: not inner(args, event), (child,))
        members = node[key]
        if not isinstance(members, list):
            raise InvalidTrigger(f"{where}: {key!r} takes a list of conditions")
        children = tuple(_compile(member, signature, f"{where}.{key}[{i}]", depth + 1)
                         for i, member in enumerate(members))
        predicates = [child.predicate for child in children]
        if key == "all":
            return Condition("all", all_of(predicates), children)
        return Condition("any", _any(predicates), children)
    if "field" not in node or "op" not in node:
        raise InvalidTrigger(f"{where}: a condition is all/any/not or has 'field' and 'op'")
    return _leaf(node, signature, where)


def all_of(predicates: Sequence[Predicate]) -> Predicate:
    """The conjunction of ``predicates``, evaluated in order, stopping at the first false."""
    if len(predicates) == 1:
        return predicates[0]

    def all_of(args: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        for predicate in predicates:
            if not predicate(args, event):
                return False
        return True
    return all_of


def _any(predicates: Sequence[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]

    def any_of(args: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        for predicate in predicates:
            if predicate(args, event):
                return True
        return False
    return any_of


def compile_condition_tree(conditions: object, signature: EventSignature) -> Condition | None:
    """Validate ``conditions`` (the parsed ``triggers.conditions`` JSON) against ``signature``
    and compile it; ``None`` for ``None`` (always true).

    Raises ``InvalidTrigger`` with the path of the offending node (``conditions.all[1]``)."""
    if conditions is None:
        return None
    return _compile(conditions, signature, "conditions", 0)


def compile_conditions(conditions: object, signature: EventSignature) -> Predicate:
    """:func:`compile_condition_tree`'s predicate ``(args, event) -> bool`` (always true for
    ``None``); raises ``InvalidTrigger`` the same way."""
    tree = compile_condition_tree(conditions, signature)
    return always if tree is None else tree.predicate

"""Conditions (docs/reference.md, Triggers and actions): every operator, nesting, 256-bit boundaries, value forms, address case,
paths; and property tests against a deliberately naive reference evaluator."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.abi import parse_event_signature
from core.errors import InvalidTrigger
from processor.conditions import compile_conditions

SIGNATURE = parse_event_signature(
    "Sample(address indexed from, uint256 value, int256 delta, bytes32 tag, bool flag, "
    "string note, bytes blob, uint256[] amounts, address[2] pair, "
    "(address maker, uint256 amount, uint8[] legs) order, string indexed label)")
MAX = 2 ** 256 - 1
FROM = "0x00000000000000000000000000000000000000ab"
MAKER = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
ARGS: dict[str, Any] = {
    "from": FROM, "value": MAX, "delta": -(2 ** 255), "tag": bytes(31) + b"\x01", "flag": True,
    "note": "hello world", "blob": b"\xde\xad\xbe\xef", "amounts": (1, 2, 3),
    "pair": (MAKER, FROM), "order": (MAKER, 10 ** 18, (1, 2)), "label": bytes.fromhex("aa" * 32),
}
EVENT = {"address": MAKER, "block_number": 12, "log_index": 3,
         "tx_hash": "0x" + "Ab" * 32}


def leaf(field: str, op: str, value: Any = None) -> dict[str, Any]:
    node = {"field": field, "op": op}
    return node if value is None else {**node, "value": value}


CASES: list[tuple[Any, bool]] = [
    (None, True),
    # integers: exact at 256 bits, in every value form
    (leaf("value", "eq", str(MAX)), True),
    (leaf("value", "eq", hex(MAX)), True),
    (leaf("value", "eq", "0X" + "F" * 64), True),
    (leaf("value", "eq", str(MAX - 1)), False),
    (leaf("value", "gt", str(MAX - 1)), True),
    (leaf("value", "gte", MAX), True),
    (leaf("value", "lt", str(MAX)), False),
    (leaf("value", "lte", str(MAX)), True),
    (leaf("value", "ne", "0"), True),
    (leaf("value", "gt", 2 ** 256), False),
    (leaf("delta", "eq", str(-(2 ** 255))), True),
    (leaf("delta", "lt", -(2 ** 255) + 1), True),
    (leaf("delta", "gt", 0), False),
    (leaf("order.amount", "gte", 1e18), True),
    (leaf("order.1", "eq", "1000000000000000000"), True),
    (leaf("amounts.2", "eq", 3), True),
    (leaf("amounts.3", "eq", 3), False),  # past the end of a dynamic array: not there
    (leaf("amounts.3", "ne", 3), False),
    (leaf("amounts.3", "exists"), False),
    (leaf("amounts.3", "exists", False), True),
    (leaf("amounts.0", "exists"), True),
    (leaf("order.legs.1", "in", [2, "0x3"]), True),
    (leaf("value", "in", ["1", hex(MAX)]), True),
    (leaf("value", "nin", ["1", hex(MAX)]), False),
    (leaf("value", "nin", []), True),
    # addresses and hex compare case-insensitively
    (leaf("from", "eq", FROM.upper().replace("0X", "0x")), True),
    (leaf("order.maker", "eq", "0x5FbDB2315678afecb367f032d93F642f64180aa3"), True),
    (leaf("pair.0", "eq", MAKER.upper().replace("0X", "0x")), True),
    (leaf("address", "in", ["0x5FBDB2315678AFECB367F032D93F642F64180AA3"]), True),
    (leaf("address", "ne", FROM), True),
    (leaf("tx_hash", "eq", "0x" + "aB" * 32), True),
    (leaf("tx_hash", "contains", "0xABAB"), True),
    (leaf("tag", "eq", "0x" + "00" * 31 + "01"), True),
    (leaf("label", "eq", "0x" + "AA" * 32), True),
    (leaf("blob", "contains", "0xADBE"), True),
    (leaf("blob", "eq", "0xdeadbeef"), True),
    (leaf("pair", "contains", FROM.upper().replace("0X", "0x")), True),
    (leaf("pair", "eq", [MAKER, FROM]), True),
    (leaf("amounts", "contains", "0x2"), True),
    (leaf("amounts", "contains", 4), False),
    # event fields, bools, strings
    (leaf("block_number", "gte", "12"), True),
    (leaf("log_index", "lt", 3), False),
    (leaf("flag", "eq", True), True),
    (leaf("flag", "ne", "true"), False),
    (leaf("note", "contains", "lo wo"), True),
    (leaf("note", "eq", "Hello world"), False),
    (leaf("note", "in", ["hello world", "bye"]), True),
    # nesting
    ({"all": []}, True),
    ({"any": []}, False),
    ({"all": [leaf("value", "gt", 0), leaf("flag", "eq", True)]}, True),
    ({"all": [leaf("value", "gt", 0), leaf("flag", "eq", False)]}, False),
    ({"any": [leaf("value", "lt", 0), {"not": leaf("flag", "eq", False)}]}, True),
    ({"not": {"any": [leaf("value", "lt", 0), leaf("note", "eq", "x")]}}, True),
    ({"all": [{"any": [{"not": leaf("from", "eq", MAKER)}]}, leaf("order.legs.0", "eq", 1)]},
     True),
]


@pytest.mark.parametrize(("conditions", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_table(conditions: Any, expected: bool) -> None:
    assert compile_conditions(conditions, SIGNATURE)(ARGS, EVENT) is expected


INVALID: list[tuple[Any, str]] = [
    ([leaf("value", "eq", 1)], "must be an object"),
    ({"all": leaf("value", "eq", 1)}, "'all' takes a list"),
    ({"all": [], "any": []}, "must be the only key"),
    ({"field": "value"}, "has 'field' and 'op'"),
    (leaf("value", "like", 1), "unknown operator 'like'"),
    (leaf("nope", "eq", 1), "unknown field 'nope'"),
    (leaf("value", "gt", "lots"), "'lots' is not an integer"),
    (leaf("value", "gt", "1.5"), "not an integer"),
    (leaf("value", "eq", True), "not an integer"),
    (leaf("value", "eq"), "needs a 'value'"),
    (leaf("from", "gt", 1), "needs a numeric field"),
    (leaf("note", "lte", "a"), "needs a numeric field"),
    (leaf("from", "eq", "0x1234"), "is not a 0x address"),
    (leaf("tag", "eq", "0x01"), "is 1 bytes"),
    (leaf("value", "in", "1"), "takes a list"),
    (leaf("value", "contains", 1), "'contains' needs"),
    (leaf("order", "eq", 1), "tuple can only be tested with 'exists'"),
    (leaf("order.taker", "eq", 1), "no member 'taker'"),
    (leaf("pair.2", "eq", MAKER), "past the end"),
    (leaf("amounts.x", "eq", 1), "is not a number"),
    (leaf("value.0", "eq", 1), "cannot go into"),
    (leaf("value", "exists", "yes"), "takes true or false"),
    ({"field": "value", "op": "eq", "value": 1, "extra": 1}, "unexpected keys"),
]


@pytest.mark.parametrize(("conditions", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_conditions_are_refused_at_load(conditions: Any, message: str) -> None:
    with pytest.raises(InvalidTrigger, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_conditions(conditions, SIGNATURE)


# --- property tests against a naive reference ------------------------------------------------

INT_FIELDS = {"value": (0, MAX), "delta": (-(2 ** 255), 2 ** 255 - 1)}


def reference_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def reference(node: Any, args: dict[str, Any]) -> bool:
    """Direct reading of docs/reference.md's conditions for integer and address leaves; no compilation, no caching."""
    if "all" in node:
        return all(reference(member, args) for member in node["all"])
    if "any" in node:
        return any(reference(member, args) for member in node["any"])
    if "not" in node:
        return not reference(node["not"], args)
    actual, op, value = args[node["field"]], node["op"], node["value"]
    if node["field"] == "from":
        actual, value = actual.lower(), [v.lower() for v in value] if isinstance(value, list) \
            else value.lower()
    else:
        value = [reference_int(v) for v in value] if isinstance(value, list) else reference_int(value)
    return {"eq": lambda: actual == value, "ne": lambda: actual != value,
            "gt": lambda: actual > value, "gte": lambda: actual >= value,
            "lt": lambda: actual < value, "lte": lambda: actual <= value,
            "in": lambda: actual in value, "nin": lambda: actual not in value}[op]()


def int_forms(number: int) -> st.SearchStrategy[Any]:
    forms = [st.just(number), st.just(str(number))]
    if number >= 0:
        forms += [st.just(hex(number)), st.just("0X" + format(number, "X"))]
    return st.one_of(*forms)


@st.composite
def int_leaf(draw: st.DrawFn, args: dict[str, Any]) -> dict[str, Any]:
    field = draw(st.sampled_from(sorted(INT_FIELDS)))
    low, high = INT_FIELDS[field]
    near = st.sampled_from([args[field] - 1, args[field], args[field] + 1, low, high, 0])
    op = draw(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]))
    if op in ("in", "nin"):
        numbers = draw(st.lists(st.one_of(near, st.integers(low, high)), max_size=4))
        return leaf(field, op, [draw(int_forms(n)) for n in numbers])
    return leaf(field, op, draw(int_forms(draw(st.one_of(near, st.integers(low, high))))))


@st.composite
def address_leaf(draw: st.DrawFn, args: dict[str, Any]) -> dict[str, Any]:
    def cased(address: str) -> str:
        flips = draw(st.lists(st.booleans(), min_size=40, max_size=40))
        return "0x" + "".join(c.upper() if f else c for c, f in zip(address[2:], flips, strict=True))
    other = draw(st.integers(0, 2 ** 160 - 1).map(lambda n: "0x" + f"{n:040x}"))
    op = draw(st.sampled_from(["eq", "ne", "in", "nin"]))
    choices = [cased(args["from"]), cased(other)]
    if op in ("in", "nin"):
        return leaf("from", op, draw(st.lists(st.sampled_from(choices), max_size=3)))
    return leaf("from", op, draw(st.sampled_from(choices)))


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    args = {"value": draw(st.one_of(st.integers(0, MAX), st.sampled_from([0, 1, MAX, MAX - 1]))),
            "delta": draw(st.integers(-(2 ** 255), 2 ** 255 - 1)),
            "from": "0x" + f"{draw(st.integers(0, 2 ** 160 - 1)):040x}"}
    leaves = st.one_of(int_leaf(args), address_leaf(args))
    tree = draw(st.recursive(leaves, lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, max_size=3).map(lambda c: {"any": c}),
        children.map(lambda c: {"not": c})), max_leaves=8))
    return tree, args


PROPERTY_SIGNATURE = parse_event_signature(
    "P(address indexed from, uint256 value, int256 delta)")


@settings(max_examples=400, deadline=None)
@given(scenario())
def test_compiled_conditions_equal_the_reference(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    tree, args = case
    assert compile_conditions(tree, PROPERTY_SIGNATURE)(args, EVENT) is reference(tree, args)


def test_fixed_point_nan_is_refused_at_load_not_raised_per_event() -> None:
    """Comparing a Decimal with NaN raises: such a trigger used to stop the processor."""
    signature = parse_event_signature("Price(ufixed128x18 price)")
    for value in ("NaN", "sNaN", "nan"):
        with pytest.raises(InvalidTrigger, match="is not a number"):
            compile_conditions({"field": "price", "op": "gt", "value": value}, signature)
    assert compile_conditions({"field": "price", "op": "lt", "value": "1.5"}, signature)(
        {"price": Decimal("1.25")}, EVENT) is True

"""The match index equals the evaluator it replaced (every candidate, whole predicate), on random
triggers and events; which conjunct becomes a key; and that logs no key admits are not decoded."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any
from unittest.mock import patch

import pytest
from eth_abi import encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.abi import parse_event_signature
from processor import intervals as interval_module
from processor.evaluate import Evaluation, evaluate_events
from processor.intervals import IntervalIndex
from processor.registry import CompiledTrigger, TriggerRegistry, TriggerRow

CHAIN = 1
TOKENS = ["0x" + "a1" * 20, "0x" + "b2" * 20, "0x" + "c3" * 20]  # the last one is never watched
MAX = 2 ** 256 - 1
UINTS = [0, 1, 2, 1000, 2 ** 128, 2 ** 255 - 1, 2 ** 255, MAX - 1, MAX]
INTS = [-(2 ** 255), -(2 ** 255) + 1, -1, 0, 1, 2 ** 255 - 2, 2 ** 255 - 1]
ADDRESSES = ["0x" + f"{n:040x}" for n in (0, 1, 0xABCDEF)] + ["0x" + "fe" * 20]
TAGS = [bytes(32), b"\x01" * 32, bytes.fromhex("ab" * 32)]
NOTES = ["", "hello", "héllo wörld"]
BLOBS = [b"", b"\xde\xad\xbe\xef", b"\x00" * 40]

# Four layouts, three of them sharing Transfer's topic0 (as ERC20 and ERC721 do).
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
NFT = "Transfer(address indexed from, address indexed to, uint256 indexed value)"
MIXED = "Mixed(int256 indexed delta, bool flag, bytes32 tag, uint8 small, address who)"
ORDER = ("Order((address maker, uint256 amount) order, uint256[] amounts, string note, "
         "bytes blob, string indexed label)")
SIGNATURES = {text: parse_event_signature(text) for text in (TRANSFER, NFT, MIXED, ORDER)}

# field → value kind, per signature (event fields apply to all).
FIELDS = {
    TRANSFER: {"from": "address", "to": "address", "value": "uint"},
    NFT: {"from": "address", "to": "address", "value": "uint"},
    MIXED: {"delta": "int", "flag": "bool", "tag": "tag", "small": "small", "who": "address"},
    ORDER: {"order.maker": "address", "order.amount": "uint", "order.1": "uint",
            "amounts.0": "uint", "amounts.2": "uint", "note": "note", "blob": "blob",
            "label": "tag"},
}
EVENT_FIELDS = {"address": "token", "block_number": "block", "log_index": "block",
                "tx_hash": "txhash"}
POOLS: dict[str, list[Any]] = {
    "uint": UINTS, "int": INTS, "small": [0, 1, 254, 255], "address": ADDRESSES, "tag": TAGS,
    "bool": [True, False], "note": NOTES, "blob": BLOBS, "token": TOKENS, "block": [0, 1, 7, 8],
    "txhash": ["0x" + "ab" * 32, "0x" + "0c" * 32],
}
ORDERED_KINDS = {"uint", "int", "small", "block"}


# --- condition values in the forms users write ---------------------------------------------


@st.composite
def written(draw: st.DrawFn, kind: str, value: Any) -> Any:
    """``value`` as a condition would spell it: ints as JSON numbers, decimal or hex strings
    (±1 around pool values, to hit every boundary), hex in either case."""
    if kind in ORDERED_KINDS:
        number = value + draw(st.sampled_from([-1, 0, 0, 1]))
        forms = [number, str(number)]
        if number >= 0:
            forms += [hex(number), "0X" + format(number, "X")]
        return draw(st.sampled_from(forms))
    if kind in ("address", "token", "txhash"):
        return draw(st.sampled_from([value, value.upper().replace("0X", "0x")]))
    if kind in ("tag", "blob"):
        return draw(st.sampled_from(["0x" + value.hex(), "0x" + value.hex().upper()]))
    if kind == "bool":
        return draw(st.sampled_from([value, "true" if value else "false"]))
    return value


Pools = dict[str, list[Any]]


@st.composite
def example_pools(draw: st.DrawFn) -> Pools:
    """Two values per kind for one example: conditions and events draw from the same few
    values, so equalities and exact boundaries (±1) are hit often."""
    return {kind: draw(st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True))
            for kind, values in POOLS.items()}


@st.composite
def leaf(draw: st.DrawFn, fields: dict[str, str], pools: Pools) -> dict[str, Any]:
    field = draw(st.sampled_from(sorted(fields)))
    kind = fields[field]
    pool = pools[kind]
    ops = ["eq", "eq", "in", "ne", "nin", "exists"]
    if kind in ORDERED_KINDS:
        ops += ["gt", "gte", "lt", "lte"] * 2
    if kind in ("note", "blob", "txhash"):
        ops.append("contains")
    op = draw(st.sampled_from(ops))
    if op == "exists":
        return {"field": field, "op": op, "value": draw(st.booleans())}
    if op in ("in", "nin"):
        values = draw(st.lists(st.sampled_from(pool), max_size=3))
        return {"field": field, "op": op, "value": [draw(written(kind, v)) for v in values]}
    if op == "contains":
        if kind == "note":
            return {"field": field, "op": op, "value": draw(st.sampled_from(["", "ll", "ö", "x"]))}
        return {"field": field, "op": op, "value": draw(st.sampled_from(["0x", "0xADBE", "0x00"]))}
    return {"field": field, "op": op, "value": draw(written(kind, draw(st.sampled_from(pool))))}


@st.composite
def range_pair(draw: st.DrawFn, fields: dict[str, str], pools: Pools) -> dict[str, Any]:
    """``low <= field < high`` and friends: the shape users give thresholds."""
    ordered = sorted(f for f, kind in fields.items() if kind in ORDERED_KINDS)
    field = draw(st.sampled_from(ordered))
    kind = fields[field]
    low, high = sorted(draw(st.lists(st.sampled_from(pools[kind]), min_size=2, max_size=2)))
    return {"all": [
        {"field": field, "op": draw(st.sampled_from(["gt", "gte"])), "value": draw(written(kind, low))},
        {"field": field, "op": draw(st.sampled_from(["lt", "lte"])), "value": draw(written(kind, high))}]}


@st.composite
def eq_union(draw: st.DrawFn, fields: dict[str, str], pools: Pools) -> dict[str, Any]:
    field = draw(st.sampled_from(sorted(fields)))
    kind = fields[field]
    values = draw(st.lists(st.sampled_from(pools[kind]), min_size=1, max_size=3))
    return {"any": [{"field": field, "op": "eq", "value": draw(written(kind, v))} for v in values]}


@st.composite
def negated_comparison(draw: st.DrawFn, fields: dict[str, str], pools: Pools) -> dict[str, Any]:
    """``not`` of an ordered comparison: an interval on a field that is always there, not on
    one that may be absent (``amounts.2`` of a short array)."""
    ordered = sorted(f for f, kind in fields.items() if kind in ORDERED_KINDS)
    field = draw(st.sampled_from(ordered))
    kind = fields[field]
    value = draw(written(kind, draw(st.sampled_from(pools[kind]))))
    return {"not": {"field": field, "op": draw(st.sampled_from(["gt", "gte", "lt", "lte"])),
                    "value": value}}


def conditions(signature: str, pools: Pools) -> st.SearchStrategy[Any]:
    fields = {**FIELDS[signature], **EVENT_FIELDS}
    leaves = st.one_of(leaf(fields, pools), range_pair(fields, pools), eq_union(fields, pools),
                       negated_comparison(fields, pools))
    trees = st.recursive(leaves, lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, min_size=1, max_size=2).map(lambda c: {"any": c}),
        children.map(lambda c: {"not": c})), max_leaves=4)
    # Mostly a conjunction at the top, the shape the index keys on.
    conjunction = st.lists(st.one_of(leaves, leaves, trees), min_size=1, max_size=3)
    return st.one_of(st.none(), leaves, conjunction.map(lambda c: {"all": c}), trees)


def signature_of(draw: st.DrawFn, main: str) -> str:
    """Mostly the example's main signature; sometimes another (a second layout, a wildcard)."""
    return draw(st.sampled_from([main] * 4 + sorted(SIGNATURES)))


@st.composite
def trigger_rows(draw: st.DrawFn, main: str, pools: Pools) -> list[TriggerRow]:
    rows = []
    for n in range(draw(st.integers(1, 12))):
        signature = signature_of(draw, main)
        rows.append(TriggerRow(
            id=n + 1, name=f"t{n}", chain_id=CHAIN,
            address=draw(st.sampled_from([TOKENS[0], TOKENS[0], TOKENS[0].upper().replace("0X", "0x"),
                                          TOKENS[1], None])),
            event_signature=signature, conditions=draw(conditions(signature, pools)),
            confirmations=draw(st.sampled_from([0, 0, 3])), error=None,
            actions=tuple((100 * (n + 1) + a, {"url": "https://example.com/hook"})
                          for a in range(draw(st.integers(1, 2))))))
    return rows


# --- events: ABI-encoded logs, some that do not fit their signature ------------------------


def _word_hex(value: bytes) -> str:
    return "0x" + value.hex()


@st.composite
def event(draw: st.DrawFn, number: int, main: str, pools: Pools) -> dict[str, Any]:
    signature = SIGNATURES[signature_of(draw, main)]

    def pick(kind: str) -> Any:
        return draw(st.sampled_from(pools[kind]))
    values: dict[str, Any] = {
        "from": pick("address"), "to": pick("address"), "value": pick("uint"),
        "delta": pick("int"), "flag": pick("bool"), "tag": pick("tag"), "small": pick("small"),
        "who": pick("address"), "order": (pick("address"), pick("uint")),
        "amounts": draw(st.lists(st.sampled_from(pools["uint"]), max_size=3)),
        "note": pick("note"), "blob": pick("blob"),
        "label": pick("tag"),  # a hashed indexed string: its topic is the hash
    }
    topics: list[str] = [signature.topic0]
    body_types, body_values = [], []
    for param in signature.inputs:
        if param.indexed:
            raw = values[param.name] if param.hashed_in_topic else encode([param.type],
                                                                         [values[param.name]])
            topics.append(_word_hex(raw))
        else:
            body_types.append(param.type)
            body_values.append(values[param.name])
    data = "0x" + encode(body_types, body_values).hex()
    fault = draw(st.sampled_from([None] * 6 + ["drop-topic", "extra-topic", "short-data",
                                                "dirty-padding", "not-hex", "big-word"]))
    if fault == "drop-topic" and len(topics) > 1:
        topics.pop()
    elif fault == "extra-topic" and len(topics) < 4:
        topics.append(_word_hex(b"\x07" * 32))
    elif fault == "short-data":
        data = data[:max(2, len(data) - 64)]
    elif fault == "dirty-padding" and len(topics) > 1:
        topics[1] = "0xff" + topics[1][4:]  # an address topic with non-zero padding
    elif fault == "not-hex":
        data = data[:-1] + "g" if len(data) > 2 else "0xg0"
    elif fault == "big-word" and len(data) >= 66:
        data = "0x" + "ff" * 32 + data[66:]  # out of range for uint8 / bool / address
    topic_columns = [*topics[1:], None, None, None][:3]
    return {"id": number, "block_number": pick("block"),
            "block_time": datetime(2026, 1, 1, tzinfo=UTC),
            "tx_hash": draw(st.sampled_from([*pools["txhash"], "0x" + "AB" * 32])),
            "log_index": pick("block"),
            "address": draw(st.sampled_from([TOKENS[0], *TOKENS])), "topic0": topics[0],
            "topic1": topic_columns[0], "topic2": topic_columns[1], "topic3": topic_columns[2],
            "data": data}


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[TriggerRow], list[dict[str, Any]]]:
    main = draw(st.sampled_from(sorted(SIGNATURES)))
    pools = draw(example_pools())
    rows = draw(trigger_rows(main, pools))
    return rows, [draw(event(n, main, pools)) for n in range(draw(st.integers(1, 12)))]


def outcome(evaluation: Evaluation) -> dict[str, Any]:
    record = dataclasses.asdict(evaluation)
    record.pop("decode_failures")  # counted only where decoding happens (see below)
    return record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario(), checkpoint=st.sampled_from([None, 5, 100]))
def test_index_matches_exactly_what_every_whole_predicate_matches(
        case: tuple[list[TriggerRow], list[dict[str, Any]]], checkpoint: int | None) -> None:
    rows, logs = case
    registry = TriggerRegistry.build(rows)
    indexed = evaluate_events(logs, registry, chain_id=CHAIN, checkpoint=checkpoint)
    reference = evaluate_events(logs, registry, chain_id=CHAIN, checkpoint=checkpoint,
                                reference=True)
    assert outcome(indexed) == outcome(reference)  # same pairs, same order, deferred alike
    # A failure is counted when a decode is tried: never more than the reference, which tries
    # every candidate log.
    assert indexed.decode_failures <= reference.decode_failures


# --- the interval tree against a scan -------------------------------------------------------

BOUNDS = st.one_of(st.none(), st.sampled_from([-(2 ** 255), -1, 0, 1, 5, 9, 2 ** 256 - 1]),
                   st.integers(-20, 20))


@settings(max_examples=200, deadline=None)
@given(intervals=st.lists(st.tuples(BOUNDS, BOUNDS), max_size=40),
       points=st.lists(st.one_of(st.integers(-25, 25),
                                 st.sampled_from([-(2 ** 255), 2 ** 256 - 1, 2 ** 256])),
                       max_size=10))
def test_interval_stab_equals_a_scan(intervals: list[tuple[int | None, int | None]],
                                     points: list[int]) -> None:
    for budget in (-(10 ** 9), 10 ** 9):  # force the centred tree, then the segment table
        with patch.object(interval_module, "_SEGMENT_BUDGET", budget):
            index = IntervalIndex((low, high, n) for n, (low, high) in enumerate(intervals))
        for x in points:
            expected = [n for n, (low, high) in enumerate(intervals)
                        if (low is None or low <= x) and (high is None or x <= high)]
            assert sorted(index.stab(x)) == expected


# --- which conjunct becomes the key ---------------------------------------------------------

T = TOKENS[0]


def registry_of(*conditions: Any, signature: str = TRANSFER) -> TriggerRegistry:
    return TriggerRegistry.build([
        TriggerRow(id=n + 1, name=f"t{n}", chain_id=CHAIN, address=T, event_signature=signature,
                   conditions=c, confirmations=0, error=None,
                   actions=((n + 1, {"url": "https://example.com/hook"}),))
        for n, c in enumerate(conditions)])


def keys(registry: TriggerRegistry) -> list[tuple[str, Any]]:
    [index] = registry.indexes(CHAIN, T, SIGNATURES[TRANSFER].topic0)
    found: list[tuple[str, Any]] = [("unkeyed", len(index.unkeyed))] if index.unkeyed else []
    for probe in index.probes:
        if probe.table is not None:
            found.append(("hash", sorted(probe.table)))
        else:
            assert probe.intervals is not None
            found.append(("intervals", probe.intervals.size, probe.intervals.layout))
    return found


TO = "0x" + "0" * 39 + "1"


@pytest.mark.parametrize(("conditions", "expected"), [
    ({"field": "to", "op": "eq", "value": TO.upper().replace("0X", "0x")}, [("hash", [TO])]),
    ({"field": "value", "op": "in", "value": ["5", "0x5", 6]}, [("hash", [5, 6])]),
    ({"any": [{"field": "to", "op": "eq", "value": TO}, {"field": "to", "op": "in", "value": []}]},
     [("hash", [TO])]),
    ({"all": [{"field": "value", "op": "gte", "value": 10}, {"field": "value", "op": "lt", "value": 20},
              {"field": "from", "op": "ne", "value": TO}]}, [("intervals", 1, "segments")]),
    # an event column needs no decoding: it is preferred to a decoded argument
    ({"all": [{"field": "to", "op": "eq", "value": TO}, {"field": "log_index", "op": "eq", "value": 3}]},
     [("hash", [3])]),
    ({"all": [{"field": "value", "op": "gt", "value": 1}, {"field": "to", "op": "eq", "value": TO}]},
     [("hash", [TO])]),
    ({"any": [{"field": "to", "op": "eq", "value": TO}, {"field": "from", "op": "eq", "value": TO}]},
     [("unkeyed", 1)]),
    ({"not": {"field": "value", "op": "lt", "value": 5}}, [("intervals", 1, "segments")]),
    ({"not": {"field": "value", "op": "eq", "value": 5}}, [("unkeyed", 1)]),
    ({"field": "value", "op": "nin", "value": [1]}, [("unkeyed", 1)]),
    (None, [("unkeyed", 1)]),
], ids=["eq", "in", "any-of-eq", "range", "event-column", "hash-first", "two-fields",
        "not-range", "not-eq", "nin", "none"])
def test_key_choice(conditions: Any, expected: list[tuple[str, Any]]) -> None:
    assert keys(registry_of(conditions)) == expected


def test_thousands_of_triggers_on_one_field_share_one_lookup() -> None:
    wallets = ["0x" + f"{n:040x}" for n in range(2000)]
    registry = registry_of(*[{"field": "to", "op": "eq", "value": w} for w in wallets],
                           *[{"all": [{"field": "value", "op": "gte", "value": 10 * n},
                                      {"field": "value", "op": "lt", "value": 10 * n + 10}]}
                             for n in range(500)])
    assert keys(registry) == [("hash", wallets), ("intervals", 500, "segments")]
    thresholds = registry_of(*[{"field": "value", "op": "gte", "value": n} for n in range(600)])
    assert keys(thresholds) == [("intervals", 600, "tree")]  # nested: segments would be 600²/2


def test_logs_no_key_admits_are_not_decoded_whole() -> None:
    registry = registry_of(*[{"field": "to", "op": "eq", "value": "0x" + f"{n:040x}"}
                             for n in range(1, 101)])
    calls = []
    [trigger] = registry.triggers[:1]
    original = trigger.decoder

    def counting(*args: Any) -> dict[str, Any]:
        calls.append(args)
        return original(*args)

    counted = TriggerRegistry(triggers=tuple(
        dataclasses.replace(t, decoder=counting) for t in registry.triggers))

    def transfer(to: int, number: int) -> dict[str, Any]:
        return {"id": number, "block_number": 1, "block_time": None, "tx_hash": "0x" + "00" * 32,
                "log_index": 0, "address": T, "topic0": SIGNATURES[TRANSFER].topic0,
                "topic1": "0x" + "00" * 32, "topic2": "0x" + f"{to:064x}", "topic3": None,
                "data": "0x" + f"{7:064x}"}

    logs = [transfer(to, n) for n, to in enumerate([500, 600, 42, 700])]
    result = evaluate_events(logs, counted, chain_id=CHAIN, checkpoint=None)
    assert result.trigger_ids == [42] and len(calls) == 1  # only the admitted log was decoded
    assert isinstance(counted.triggers[0], CompiledTrigger)

"""Factory triggers in the processor, on both backends: children kept by the database from the
stored creation logs, matched from their creation block on (same block, same transaction),
dropped with an orphaned creation (and their deliveries corrected), backfilled when a factory is
registered after its creations were stored, shared by several triggers; bad factory columns go
to ``triggers.error``. The real Uniswap V2 contracts are exercised in tests/ingest and tests/e2e;
here the logs are written with SQL, as the indexer writes them."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from eth_abi import encode

from core.abi import parse_event_signature
from core.db import connect
from core.errors import InvalidTrigger
from core.factories import Factory, factory_of
from processor.refire import refire
from tests.processor.conftest import Harness
from tests.processor.helpers import (
    CHAIN_ID,
    SECRET,
    Log,
    address_topic,
    delivery_statuses,
    insert_events,
    reorg,
    wallet,
)

FACTORY = "0x5c69bee701ef814a2b6a3edd4b1652cb9cc5aa6f"
PAIR_CREATED = "PairCreated(address indexed token0, address indexed token1, address pair, uint)"
SWAP = ("Swap(address indexed sender, uint amount0In, uint amount1In, uint amount0Out, "
        "uint amount1Out, address indexed to)")
PAIR_CREATED_TOPIC = parse_event_signature(PAIR_CREATED).topic0
SWAP_TOPIC = parse_event_signature(SWAP).topic0
LARGE = {"any": [{"field": "amount0In", "op": "gte", "value": "100"},
                 {"field": "amount1In", "op": "gte", "value": "100"}]}
PAIR_A, PAIR_B, PAIR_C = wallet(0xA), wallet(0xB), wallet(0xC)


def created(block: int, log_index: int, pair: str, *, factory: str = FACTORY,
            **kwargs: Any) -> Log:
    return Log(block, log_index, factory,
               (PAIR_CREATED_TOPIC, address_topic(wallet(1)), address_topic(wallet(2))),
               "0x" + encode(["address", "uint256"], [pair, 1]).hex(), **kwargs)


def swap(block: int, log_index: int, pair: str, amount0_in: int, **kwargs: Any) -> Log:
    return Log(block, log_index, pair,
               (SWAP_TOPIC, address_topic(wallet(3)), address_topic(wallet(4))),
               "0x" + encode(["uint256"] * 4, [amount0_in, 0, 0, amount0_in]).hex(), **kwargs)


async def add_factory_trigger(conn: asyncpg.Connection, name: str, *, conditions: Any = LARGE,
                              factory: str | None = FACTORY, signature: str = PAIR_CREATED,
                              parameter: str = "pair") -> tuple[int, int]:
    trigger_id = await conn.fetchval(
        """INSERT INTO triggers (name, chain_id, event_signature, conditions, factory_address,
                                 factory_event_signature, factory_parameter)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        name, CHAIN_ID, SWAP, conditions, factory, signature, parameter)
    action_id = await conn.fetchval(
        "INSERT INTO actions (trigger_id, config) VALUES ($1, $2) RETURNING id", trigger_id,
        {"url": "https://example.com/hook", "secret": SECRET})
    return trigger_id, action_id


async def matched(conn: asyncpg.Connection, trigger_id: int) -> list[tuple[int, int, str]]:
    rows = await conn.fetch(
        """SELECT e.block_number, e.log_index, e.address FROM deliveries d
           JOIN events e ON e.id = d.event_id
           WHERE d.trigger_id = $1 AND d.kind = 'matched' ORDER BY e.id""", trigger_id)
    return [(r["block_number"], r["log_index"], r["address"]) for r in rows]


async def test_children_match_from_their_creation_block_same_transaction_included(
        db_url: str, redis_url: str, harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        large, _ = await add_factory_trigger(conn, "large-swaps-any-pair")
        every, _ = await add_factory_trigger(conn, "every-swap-any-pair", conditions=None)
        await harness.step()  # registers the factory
        await insert_events(conn, [
            swap(9, 0, PAIR_A, 500),  # before its creation: not a child yet
            created(10, 0, PAIR_A),
            swap(10, 1, PAIR_A, 500),  # same block, same transaction, after the creation log
            swap(10, 2, PAIR_B, 500),  # a look-alike: same event, never created by the factory
            swap(10, 3, PAIR_A, 5),  # too small for "large"
            created(11, 0, PAIR_B, factory=wallet(0xF)),  # another factory's PairCreated
        ])
        await insert_events(conn, [swap(12, 0, PAIR_B, 500), swap(12, 1, PAIR_A, 700)])
        await harness.step()
        assert await matched(conn, large) == [(10, 1, PAIR_A), (12, 1, PAIR_A)]
        assert await matched(conn, every) == [(10, 1, PAIR_A), (10, 3, PAIR_A), (12, 1, PAIR_A)]
        children = await conn.fetch("SELECT child_address, block_number FROM factory_children")
        assert [(r["child_address"], r["block_number"]) for r in children] == [(PAIR_A, 10)]
        assert await conn.fetchval("SELECT count(*) FROM factories") == 1  # shared
    finally:
        await conn.close()


async def test_a_child_created_in_an_orphaned_block_stops_matching_and_is_corrected(
        db_url: str, redis_url: str, harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        trigger, _ = await add_factory_trigger(conn, "large-swaps-any-pair")
        await harness.step()
        await insert_events(conn, [created(5, 0, PAIR_A), swap(6, 0, PAIR_A, 500)])
        await insert_events(conn, [created(20, 0, PAIR_C), swap(20, 1, PAIR_C, 500),
                                   swap(21, 0, PAIR_C, 500), swap(21, 1, PAIR_A, 500)])
        await harness.step()
        assert len(await matched(conn, trigger)) == 4
        # The workers delivered the block-20 swap; the others are still queued.
        await conn.execute("""UPDATE deliveries SET status = 'delivered' FROM events e
                              WHERE e.id = event_id AND e.block_number = 20""")
        assert await reorg(conn, common_ancestor=19) == 4
        assert await conn.fetchval(
            "SELECT count(*) FROM factory_children WHERE child_address = $1", PAIR_C) == 0
        # The new branch: PAIR_C was never created there; its address emits anyway (another
        # contract at that address on this branch, or a replayed log): not a child.
        await insert_events(conn, [swap(20, 0, PAIR_A, 600, block_hash="0x" + "e" * 64),
                                   swap(21, 0, PAIR_C, 600, block_hash="0x" + "f" * 64)])
        await harness.step()
        rows = await conn.fetch(
            """SELECT e.block_number, e.address, e.invalidated, d.kind, d.status
               FROM deliveries d JOIN events e ON e.id = d.event_id ORDER BY d.id""")
        summary = [(r["block_number"], r["address"], r["invalidated"], r["kind"], r["status"])
                   for r in rows]
        assert sorted(summary) == sorted([
            (6, PAIR_A, False, "matched", "queued"),
            (20, PAIR_C, True, "matched", "delivered"),
            (21, PAIR_C, True, "matched", "cancelled"),
            (21, PAIR_A, True, "matched", "cancelled"),
            (20, PAIR_C, True, "removed", "queued"),
            (20, PAIR_A, False, "matched", "queued"),  # the surviving child still matches
        ])
    finally:
        await conn.close()


async def test_a_factory_registered_later_finds_the_children_already_stored(
        db_url: str, redis_url: str, harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        await insert_events(conn, [created(3, 0, PAIR_A), created(4, 0, PAIR_B),
                                   swap(4, 1, PAIR_B, 900), swap(8, 0, PAIR_A, 900)])
        await harness.step()  # no trigger yet: nothing matches, nothing is a child
        assert await conn.fetchval("SELECT count(*) FROM factory_children") == 0
        trigger, _ = await add_factory_trigger(conn, "large-swaps-any-pair")
        await harness.step()
        children = {r["child_address"]: r["block_number"]
                    for r in await conn.fetch("SELECT * FROM factory_children")}
        assert children == {PAIR_A: 3, PAIR_B: 4}
        # History is refire's job (a new trigger does not fire for old events by itself).
        report = await refire(conn, chain_id=CHAIN_ID, from_block=0, to_block=10, dry_run=False)
        assert report.deliveries == 2
        assert await matched(conn, trigger) == [(4, 1, PAIR_B), (8, 0, PAIR_A)]
        # New swaps of the backfilled children match live.
        await insert_events(conn, [swap(12, 0, PAIR_A, 100)])
        await harness.step()
        assert (12, 0, PAIR_A) in await matched(conn, trigger)
        assert sum((await delivery_statuses(conn)).values()) == 3
    finally:
        await conn.close()


async def test_refire_registers_a_factory_no_processor_has_seen(db_url: str) -> None:
    """``scripts/replay.py --refire`` with no processor running: the factory trigger's history
    fires all the same (a dry run registers nothing and reports what is registered)."""
    from processor.registry import TriggerRegistry, fetch_trigger_rows

    conn = await connect(db_url)
    try:
        await insert_events(conn, [created(3, 0, PAIR_A), swap(4, 0, PAIR_A, 900),
                                   swap(4, 1, PAIR_B, 900)])
        trigger, _ = await add_factory_trigger(conn, "large-swaps-any-pair")
        registry = TriggerRegistry.build(await fetch_trigger_rows(conn))  # as replay.py does
        dry = await refire(conn, chain_id=CHAIN_ID, from_block=0, to_block=10, dry_run=True,
                           registry=registry)
        assert dry.deliveries == 0 and await conn.fetchval("SELECT count(*) FROM factories") == 0
        report = await refire(conn, chain_id=CHAIN_ID, from_block=0, to_block=10, dry_run=False,
                              registry=registry)
        assert report.deliveries == 1
        assert await matched(conn, trigger) == [(4, 0, PAIR_A)]
    finally:
        await conn.close()


async def test_bad_factory_columns_are_recorded_in_triggers_error(
        db_url: str, redis_url: str, harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        bad = {
            "no-such-parameter": dict(parameter="pool"),
            "not-an-address": dict(parameter="token0", signature="PairCreated(uint token0)"),
            "bad-signature": dict(signature="PairCreated(address pair"),
        }
        ids = {name: (await add_factory_trigger(conn, name, **kwargs))[0]
               for name, kwargs in bad.items()}
        good, _ = await add_factory_trigger(conn, "good")
        await harness.step()
        errors = {r["id"]: r["error"] for r in await conn.fetch("SELECT id, error FROM triggers")}
        assert "'pool' is not a parameter of PairCreated" in errors[ids["no-such-parameter"]]
        assert "token0" in errors[ids["not-an-address"]]
        assert "not an address" in errors[ids["not-an-address"]]
        assert errors[ids["bad-signature"]].startswith("factory_event_signature:")
        assert errors[good] is None
        # What the database refuses outright: an address and a factory, or half a factory.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                """INSERT INTO triggers (name, chain_id, address, event_signature,
                                         factory_address, factory_event_signature,
                                         factory_parameter)
                   VALUES ('both', 1, $1, $2, $1, $3, 'pair')""", FACTORY, SWAP, PAIR_CREATED)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                """INSERT INTO triggers (name, chain_id, event_signature, factory_address)
                   VALUES ('half', 1, $1, $2)""", SWAP, FACTORY)
    finally:
        await conn.close()


@pytest.mark.parametrize(("signature", "parameter", "location"), [
    (PAIR_CREATED, "pair", (0, 0)),
    (PAIR_CREATED, "token1", (2, 0)),
    ("PoolCreated(address indexed token0, address indexed token1, uint24 indexed fee, "
     "int24 tickSpacing, address pool)", "pool", (0, 32)),
    ("Created(string name, uint256[2] pair, (uint8,bool) flags, address proxy)", "proxy",
     (0, 32 * 5)),
    ("ProxyCreation(address proxy, address singleton)", "singleton", (0, 32)),
])
def test_child_location(signature: str, parameter: str, location: tuple[int, int]) -> None:
    factory = factory_of(1, FACTORY.upper().replace("0X", "0x"), signature, parameter)
    assert (factory.child_topic, factory.child_offset) == location
    assert factory.address == FACTORY


async def test_the_database_reads_children_as_python_does(db_url: str) -> None:
    """``blockhook_child_address`` (the triggers on events) and ``Factory.child_of`` (ingest)
    agree, short and odd logs included."""
    child = "0x" + "ab" * 20
    word = "0" * 24 + "ab" * 20
    cases = [
        (1, 0, "0x" + word, None, None, "0x"),
        (3, 0, "0x" + "1" * 64, None, "0x" + word, "0x"),
        (3, 0, "0x" + "1" * 64, None, None, "0x"),  # topic absent
        (2, 0, "0x" + "1" * 64, "0x12", None, "0x"),  # malformed topic
        (0, 0, None, None, None, "0x" + word),
        (0, 32, None, None, None, "0x" + "2" * 64 + word + "3" * 64),
        (0, 32, None, None, None, "0x" + "2" * 64 + word[:-2]),  # one byte short
        (0, 0, None, None, None, "0x"),
    ]
    conn = await connect(db_url)
    try:
        for child_topic, offset, topic1, topic2, topic3, data in cases:
            in_sql = await conn.fetchval(
                "SELECT blockhook_child_address($1, $2, $3, $4, $5, $6)",
                child_topic, offset, topic1, topic2, topic3, data)
            factory = Factory(1, FACTORY, "0x00", child_topic, offset)
            assert in_sql == factory.child_of(topic1, topic2, topic3, data)
        assert Factory(1, FACTORY, "0x00", 0, 0).child_of(None, None, None, "0x" + word) == child
    finally:
        await conn.close()


def test_factory_of_refuses_a_bad_address() -> None:
    with pytest.raises(InvalidTrigger, match="factory_address"):
        factory_of(1, "0x1234", PAIR_CREATED, "pair")


def test_the_index_and_the_reference_agree_on_factory_triggers() -> None:
    """``matches`` (index + child groups) is ``reference_matches`` (every candidate, whole
    predicate) on children before and after their creation, look-alikes and mixed triggers."""
    from processor.evaluate import evaluate_events
    from processor.registry import TriggerRegistry, TriggerRow

    def row(n: int, conditions: Any, *, factory: bool = True, address: str | None = None
            ) -> TriggerRow:
        return TriggerRow(id=n, name=f"t{n}", chain_id=CHAIN_ID, address=address,
                          event_signature=SWAP, conditions=conditions, confirmations=0,
                          error=None, actions=((n, {"url": "https://example.com"}),),
                          factory_address=FACTORY if factory else None,
                          factory_event_signature=PAIR_CREATED if factory else None,
                          factory_parameter="pair" if factory else None)

    registry = TriggerRegistry.build([
        row(1, LARGE), row(2, None), row(3, {"field": "amount0In", "op": "eq", "value": 7}),
        row(4, LARGE, factory=False, address=PAIR_A), row(5, LARGE, factory=False)])
    (group,) = registry.factory_groups.values()
    children = {PAIR_A: ((group, 10),), PAIR_C: ((group, 30),)}
    events = []
    for n, (block, pair, amount) in enumerate([(9, PAIR_A, 500), (10, PAIR_A, 500),
                                               (11, PAIR_A, 7), (20, PAIR_B, 500),
                                               (29, PAIR_C, 900), (30, PAIR_C, 900),
                                               (31, PAIR_C, 3)]):
        log = swap(block, 0, pair, amount)
        events.append({"id": n, "block_number": block, "block_time": None, "address": pair,
                       "topic0": log.topics[0], "topic1": log.topics[1],
                       "topic2": log.topics[2], "topic3": None, "data": log.data,
                       "tx_hash": "0x", "log_index": 0})
    indexed = evaluate_events(events, registry, chain_id=CHAIN_ID, checkpoint=None,
                              children=children)
    reference = evaluate_events(events, registry, chain_id=CHAIN_ID, checkpoint=None,
                                children=children, reference=True)
    pairs = list(zip(indexed.event_ids, indexed.trigger_ids, strict=True))
    assert pairs == list(zip(reference.event_ids, reference.trigger_ids, strict=True))
    assert pairs == [(0, 4), (0, 5), (1, 4), (1, 1), (1, 2), (1, 5), (2, 2), (2, 3), (3, 5),
                     (4, 5), (5, 1), (5, 2), (5, 5), (6, 2)]

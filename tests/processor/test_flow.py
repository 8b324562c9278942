"""The processor's units of work on both storage backends: batches → deliveries → RQ, invalid
triggers, confirmations, reorg corrections, refire, and chunk exclusion on a hypertable."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import orjson
import redis
from rq import Queue
from structlog.testing import capture_logs

from core.db import connect
from core.queue import QUEUE_NAME, REPLAY_QUEUE_NAME, enqueue_deliveries, worker_queues
from processor.batches import LOAD_EVENTS
from processor.refire import refire
from tests.processor.conftest import Harness
from tests.processor.helpers import (
    GENESIS,
    SECRET,
    TOKEN,
    Log,
    add_trigger,
    delivery_statuses,
    insert_events,
    reorg,
    set_checkpoint,
    transfer,
    wallet,
)

WHALE = {"all": [{"field": "value", "op": "gte", "value": "1000"}]}


def queued_ids(redis_url: str, queue_name: str = QUEUE_NAME) -> list[int]:
    client = redis.Redis.from_url(redis_url)
    try:
        ids: list[int] = []
        for job in Queue(queue_name, connection=client).jobs:
            ids += job.args[0]
        return sorted(ids)
    finally:
        client.close()


async def test_matching_events_become_queued_deliveries(db_url: str, redis_url: str,
                                                        harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        whale, (whale_action,) = await add_trigger(conn, "whale", conditions=WHALE)
        _, (any_action,) = await add_trigger(conn, "any-token-any-transfer", address=None)
        await insert_events(conn, [transfer(10, 0, 5), transfer(10, 1, 5000),
                                   transfer(11, 0, 1000, token=wallet(99))])
        await harness.step()
        rows = await conn.fetch("""SELECT d.id, action_id, e.block_number, e.log_index, status,
                                          event_committed_at, queued_at
                                   FROM deliveries d JOIN events e ON e.id = d.event_id
                                   ORDER BY action_id, block_number, log_index""")
        pairs = [(r["action_id"], r["block_number"], r["log_index"]) for r in rows]
        assert pairs == [(whale_action, 10, 1), (any_action, 10, 0), (any_action, 10, 1),
                         (any_action, 11, 0)]
        assert {r["status"] for r in rows} == {"queued"}
        assert all(r["queued_at"] >= r["event_committed_at"] for r in rows)
        assert queued_ids(redis_url) == sorted(r["id"] for r in rows)
        assert await conn.fetchval("SELECT count(*) FROM event_batches WHERE processed_at IS NULL") == 0
        # Re-running finds nothing new: no duplicate rows, no duplicate jobs.
        await conn.execute("UPDATE event_batches SET processed_at = NULL")
        await harness.step()
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 4
        assert len(queued_ids(redis_url)) == 4
        assert whale
    finally:
        await conn.close()


async def test_log_with_another_layout_is_a_counted_non_match(db_url: str, redis_url: str,
                                                              harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        await add_trigger(conn, "erc20-transfers")
        # ERC721 Transfer: same topic0, three indexed topics and no data.
        nft = transfer(5, 0, 0)
        nft = Log(5, 0, TOKEN, (*nft.topics, "0x" + f"{7:064x}"), "0x")
        await insert_events(conn, [nft, transfer(5, 1, 1)])
        await harness.step()
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 1
    finally:
        await conn.close()


async def test_invalid_triggers_are_recorded_and_valid_ones_keep_firing(
        db_url: str, redis_url: str, harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        invalid: dict[str, dict[str, Any]] = {
            "bad-signature": dict(signature="Transfer(address indexed from, uint257 value)"),
            "unknown-operator": dict(conditions={"field": "value", "op": "like", "value": "1"}),
            "malformed-shape": dict(conditions={"all": {"field": "value", "op": "eq"}}),
            "ftp-url": dict(configs=[{"url": "ftp://example.com/hook"}]),
            "not-a-number": dict(conditions={"field": "value", "op": "gt", "value": "lots"}),
        }
        ids = {name: (await add_trigger(conn, name, **kwargs))[0] for name, kwargs in invalid.items()}
        # An action in an endpoint secret rotation window is valid (the rotation key is known).
        await add_trigger(conn, "valid", conditions=WHALE, configs=[{
            "url": "https://example.com/hook", "secret": SECRET, "previous_secret_ttl": 60}])
        await insert_events(conn, [transfer(1, 0, 10_000)])
        with capture_logs() as logged:
            await harness.step()
            await harness.step()  # a second reload (another processor, a restart) logs nothing
        warned = [entry["trigger"] for entry in logged
                  if entry["event"] == "trigger invalid, skipped"]
        assert sorted(warned) == sorted(invalid)
        errors = {r["name"]: r["error"] for r in await conn.fetch("SELECT name, error FROM triggers")}
        assert errors["valid"] is None
        assert "uint257" in errors["bad-signature"]
        assert "unknown operator 'like'" in errors["unknown-operator"]
        assert "'all' takes a list" in errors["malformed-shape"]
        assert "action" in errors["ftp-url"] and "ftp" in errors["ftp-url"]
        assert "'lots' is not an integer" in errors["not-a-number"]
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 1
        # Writing the reason again is skipped (no churn); fixing the trigger clears it.
        before = await conn.fetchval("SELECT updated_at FROM triggers WHERE id = $1",
                                     ids["ftp-url"])
        await harness.step()
        assert await conn.fetchval("SELECT updated_at FROM triggers WHERE id = $1",
                                   ids["ftp-url"]) == before
        await conn.execute("UPDATE actions SET config = $2 WHERE trigger_id = $1",
                           ids["ftp-url"], {"url": "https://example.com/hook"})
        await insert_events(conn, [transfer(2, 0, 1)])
        await harness.step()
        assert await conn.fetchval("SELECT error FROM triggers WHERE id = $1", ids["ftp-url"]) is None
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE trigger_id = $1",
                                   ids["ftp-url"]) == 1
    finally:
        await conn.close()


async def test_confirmations_wait_and_a_reorg_during_the_wait_prevents_the_fire(
        db_url: str, redis_url: str, harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        trigger_id, _ = await add_trigger(conn, "deep", confirmations=3)
        await set_checkpoint(conn, 10)
        await insert_events(conn, [transfer(10, 0, 1), transfer(11, 0, 2)])
        await harness.step()
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 0
        assert await conn.fetchval("SELECT count(*) FROM deferred_matches") == 2
        for head in (11, 12):
            await set_checkpoint(conn, head)
            await harness.step(reload=False)
            assert await conn.fetchval("SELECT count(*) FROM deliveries") == 0, head
        # Block 11 is reorged away before it is deep enough; block 10 is not.
        await reorg(conn, common_ancestor=10)
        await set_checkpoint(conn, 13)
        await harness.step(reload=False)
        fired = await conn.fetch("""SELECT e.block_number, d.status FROM deliveries d
                                    JOIN events e ON e.id = d.event_id""")
        assert [(r["block_number"], r["status"]) for r in fired] == [(10, "queued")]
        await set_checkpoint(conn, 20)
        await harness.step(reload=False)
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 1
        assert await conn.fetchval("SELECT count(*) FROM deferred_matches") == 0
        # Historic events already deep enough fire at once.
        await insert_events(conn, [transfer(3, 0, 1)])
        await harness.step(reload=False)
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE trigger_id = $1",
                                   trigger_id) == 2
    finally:
        await conn.close()


async def test_reorg_cancels_open_deliveries_and_sends_one_removed_for_delivered(
        db_url: str, redis_url: str, harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        await add_trigger(conn, "all")
        await insert_events(conn, [transfer(20, 0, 1), transfer(21, 0, 1), transfer(22, 0, 1)])
        await harness.step()
        by_block = {r["block_number"]: r["id"] for r in await conn.fetch(
            "SELECT d.id, e.block_number FROM deliveries d JOIN events e ON e.id = d.event_id")}
        await conn.execute("UPDATE deliveries SET status = 'delivered' WHERE id = $1", by_block[21])
        await reorg(conn, common_ancestor=20)
        for _ in range(2):  # a second pass (sweep safety net) changes nothing
            await harness.step()
        rows = await conn.fetch("""SELECT e.block_number, d.kind, d.status FROM deliveries d
                                   JOIN events e ON e.id = d.event_id
                                   ORDER BY e.block_number, d.kind""")
        assert [(r["block_number"], r["kind"], r["status"]) for r in rows] == [
            (20, "matched", "queued"), (21, "matched", "delivered"), (21, "removed", "queued"),
            (22, "matched", "cancelled")]
        assert await conn.fetchval("SELECT count(*) FROM reorgs WHERE corrected_at IS NULL") == 0
        removed_id = await conn.fetchval("SELECT id FROM deliveries WHERE kind = 'removed'")
        assert removed_id in queued_ids(redis_url)
    finally:
        await conn.close()


async def test_refire_fires_only_pairs_never_delivered(db_url: str, redis_url: str,
                                                       harness: Harness) -> None:
    conn = await connect(db_url)
    try:
        await add_trigger(conn, "old", conditions=WHALE)
        await set_checkpoint(conn, 40)
        await insert_events(conn, [transfer(n, 0, 10 ** n) for n in range(30, 36)])
        await harness.step()
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 6
        new_id, _ = await add_trigger(conn, "new", conditions=WHALE)
        deep_id, _ = await add_trigger(conn, "deep", confirmations=8)
        dry = await refire(conn, chain_id=31337, from_block=30, to_block=35, dry_run=True)
        assert {t.name: t.deliveries for t in dry.per_trigger.values()} == {"new": 6, "deep": 6}
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 6
        report = await refire(conn, chain_id=31337, from_block=30, to_block=35, dry_run=False,
                              redis_client=harness.processor.redis, pool=harness.processor.pool)
        assert report.deliveries == 12 and report.events == 6
        # History waits on the replay queue, behind live deliveries, never on the live one.
        assert queued_ids(redis_url, REPLAY_QUEUE_NAME) == sorted(report.delivery_ids)
        assert not set(queued_ids(redis_url)) & set(report.delivery_ids)
        # Deep enough (block + 8 <= 40): 30, 31, 32 fire now; 33..35 wait for confirmations.
        fired = await conn.fetch("""SELECT e.block_number, d.replay FROM deliveries d
                                    JOIN events e ON e.id = d.event_id WHERE d.trigger_id = $1
                                    ORDER BY 1""", deep_id)
        assert [(r["block_number"], r["replay"]) for r in fired] == [(30, True), (31, True),
                                                                    (32, True)]
        assert await conn.fetchval("SELECT count(*) FROM deferred_matches WHERE replay") == 3
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE trigger_id = $1",
                                   new_id) == 6
        again = await refire(conn, chain_id=31337, from_block=30, to_block=35, dry_run=False)
        assert again.deliveries == 0 and not again.delivery_ids
        await set_checkpoint(conn, 43)
        await harness.step(reload=False)
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE trigger_id = $1 AND replay",
                                   deep_id) == 6
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'") == 0
    finally:
        await conn.close()


async def test_batch_query_touches_only_the_batch_chunks(db_url: str, redis_url: str,
                                                         harness: Harness) -> None:
    """On a hypertable with many chunks, loading a batch scans only the chunks it touched."""
    conn = await connect(db_url)
    try:
        # 120 days of history in daily chunks (one statement each: 120 batches), then a batch.
        for day in range(120):
            await insert_events(conn, [transfer(day * 7200 + 1, i, i, block_time=GENESIS + timedelta(
                days=day, seconds=i)) for i in range(3)])
        await conn.execute("UPDATE event_batches SET processed_at = now()")
        await insert_events(conn, [transfer(10 ** 6, 0, 1, block_time=GENESIS + timedelta(days=130))])
        batch = await conn.fetchrow("SELECT * FROM event_batches WHERE processed_at IS NULL")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + LOAD_EVENTS, 31337, batch["first_id"], batch["last_id"],
            batch["min_block_time"], batch["max_block_time"])
        plan = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
        relations: set[str] = set()

        def walk(node: dict[str, Any]) -> None:
            if "Relation Name" in node:
                relations.add(node["Relation Name"])
            for child in node.get("Plans", []):
                walk(child)
        walk(plan[0]["Plan"])
        storage = await conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
        if storage:
            chunks = await conn.fetchval("SELECT count(*) FROM timescaledb_information.chunks "
                                         "WHERE hypertable_name = 'events'")
            assert chunks >= 121
            assert len(relations) == 1 and next(iter(relations)).startswith("_hyper_"), \
                json.dumps(plan)[:2000]
        else:
            assert relations == {"events"}
        await harness.step()
        assert await conn.fetchval("SELECT count(*) FROM event_batches WHERE processed_at IS NULL") == 0
        assert await delivery_statuses(conn) == {}
        # The processor's sessions plan it afresh each time (plan_cache_mode): a generic plan
        # has no plan-time chunk exclusion, and merely building one for the cost comparison at
        # the 6th execution took ~100 ms over 500 chunks. (generic_plans counts plans *used*:
        # on a plain table Postgres would switch to the generic plan, on a hypertable it only
        # pays for building it.)
        async with harness.processor.pool.acquire() as pooled:
            assert await pooled.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            statement = await pooled.prepare(LOAD_EVENTS)
            for _ in range(8):
                await statement.fetch(31337, batch["first_id"], batch["last_id"],
                                      batch["min_block_time"], batch["max_block_time"])
            plans = await pooled.fetchrow(
                "SELECT sum(generic_plans) AS generic, sum(custom_plans) AS custom "
                "FROM pg_prepared_statements WHERE statement = $1", LOAD_EVENTS)
            assert plans["generic"] == 0 and plans["custom"] >= 8
    finally:
        await conn.close()


async def test_concurrent_claims_never_take_the_same_batch(db_url: str, redis_url: str,
                                                           harness: Harness) -> None:
    """Row-level claiming: a batch held by one processor is skipped by another, not waited for
    and not processed twice."""
    conn, rival = await connect(db_url), await connect(db_url)
    try:
        await add_trigger(conn, "all")
        for block in (1, 2, 3):
            await insert_events(conn, [transfer(block, 0, 1)])
        held = rival.transaction()
        await held.start()
        first = await rival.fetchval("SELECT id FROM event_batches ORDER BY id LIMIT 1 FOR UPDATE")
        await harness.step()
        rows = await conn.fetch("SELECT id, processed_at FROM event_batches ORDER BY id")
        assert [(r["id"], r["processed_at"] is not None) for r in rows] == [
            (first, False), (first + 1, True), (first + 2, True)]
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 2
        await held.rollback()
        await harness.step()
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 3
        assert len(queued_ids(redis_url)) == 3
    finally:
        await conn.close()
        await rival.close()


async def test_sweep_enqueues_pending_rows_and_lost_jobs(db_url: str, redis_url: str,
                                                         harness: Harness) -> None:
    from processor.outbox import sweep_outbox

    conn = await connect(db_url)
    client = harness.processor.redis
    try:
        await add_trigger(conn, "all")
        await insert_events(conn, [transfer(1, i, 1) for i in range(4)])
        await harness.step()
        ids = sorted(queued_ids(redis_url))
        # Deliveries 1-2: left pending (crash before enqueue); 3-4: queued but Redis was flushed.
        await conn.execute("UPDATE deliveries SET status = 'pending', created_at = now() - "
                           "interval '1 minute' WHERE id = ANY($1::bigint[])", ids[:2])
        await conn.execute("UPDATE deliveries SET next_attempt_at = now() - interval '2 minutes', "
                           "queued_at = now() - interval '2 minutes' WHERE id = ANY($1::bigint[])",
                           ids[2:])
        client.flushdb()
        # A backlog in the queue means jobs are probably just waiting: only pending rows go.
        client.lpush("rq:queue:blockhook-deliveries", "someone-else")
        assert await sweep_outbox(harness.processor.pool, client) == 2
        assert queued_ids(redis_url) == ids[:2]
        client.flushdb()
        assert await sweep_outbox(harness.processor.pool, client) == 2
        assert queued_ids(redis_url) == ids[2:]
        assert await delivery_statuses(conn) == {"queued": 4}
        # Just re-enqueued: not lost again until another minute has passed.
        client.flushdb()
        assert await sweep_outbox(harness.processor.pool, client) == 0
    finally:
        await conn.close()



def test_workers_take_live_deliveries_before_a_refires_history(redis_url: str) -> None:
    """The order RQ's worker dequeues in (``Queue.dequeue_any`` over its queues): a live job
    enqueued after thousands of history jobs is still the next one taken."""
    client = redis.Redis.from_url(redis_url)
    try:
        enqueue_deliveries(client, list(range(1, 2001)), queue_name=REPLAY_QUEUE_NAME)
        enqueue_deliveries(client, [5000])
        job, queue = Queue.dequeue_any(worker_queues(client), None, connection=client)
        assert queue.name == QUEUE_NAME and job.args[0] == [5000]
        job, queue = Queue.dequeue_any(worker_queues(client), None, connection=client)
        assert queue.name == REPLAY_QUEUE_NAME and job.args[0] == list(range(1, 201))
    finally:
        client.close()


async def test_deliveries_are_stored_with_generic_plans_after_every_event_load(
        db_url: str, redis_url: str, harness: Harness) -> None:
    """The claim's transaction loads its events page by page with custom plans (chunk
    exclusion), then switches to generic plans for the inserts, whose foreign-key checks would
    otherwise be planned again for every row; a claim with nothing to insert does not switch."""
    from processor.batches import process_batches
    from processor.registry import load_registry

    conn = await connect(db_url)
    try:
        await add_trigger(conn, "whale", conditions=WHALE)
        await insert_events(conn, [transfer(10, n, 5000) for n in range(5)])
        registry = await load_registry(conn)
        queries: list[str] = []
        conn.add_query_logger(lambda record: queries.append(" ".join(record.query.split())))
        claim = await process_batches(conn, registry, max_events=1000, page_size=2)
        assert len(claim.delivery_ids) == 5
        loads = [n for n, query in enumerate(queries) if query == " ".join(LOAD_EVENTS.split())]
        switch = queries.index("SET LOCAL plan_cache_mode = auto")
        inserts = [n for n, query in enumerate(queries)
                   if query.startswith("INSERT INTO deliveries")]
        assert len(loads) == 3 and max(loads) < switch < min(inserts), queries
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"  # LOCAL

        queries.clear()
        await insert_events(conn, [transfer(11, 0, 5)])  # below the whale's threshold
        claim = await process_batches(conn, registry, max_events=1000, page_size=2)
        assert claim.events == 1 and not claim.delivery_ids
        assert "SET LOCAL plan_cache_mode = auto" not in queries
    finally:
        await conn.close()


async def test_refire_inserts_with_generic_plans_after_loading_its_page(
        db_url: str, redis_url: str, harness: Harness) -> None:
    """The same for a refire's page: its events are read with custom plans, its inserts run
    with generic ones; a dry run writes nothing and switches nothing."""
    conn = await connect(db_url)
    try:
        await add_trigger(conn, "whale", conditions=WHALE)
        await insert_events(conn, [transfer(30, n, 5000) for n in range(3)])
        queries: list[str] = []
        conn.add_query_logger(lambda record: queries.append(" ".join(record.query.split())))
        dry = await refire(conn, chain_id=31337, from_block=30, to_block=30, dry_run=True)
        assert dry.deliveries == 3
        assert "SET LOCAL plan_cache_mode = auto" not in queries
        queries.clear()
        report = await refire(conn, chain_id=31337, from_block=30, to_block=30, dry_run=False)
        assert report.deliveries == 3
        load = next(n for n, query in enumerate(queries) if "FROM events" in query)
        switch = queries.index("SET LOCAL plan_cache_mode = auto")
        insert = next(n for n, query in enumerate(queries)
                      if query.startswith("INSERT INTO deliveries"))
        assert load < switch < insert, queries
    finally:
        await conn.close()

"""After-commit enqueueing (``processor.outbox.enqueue_created``): marking deliveries ``queued``
never waits on a row a worker holds. A worker may take a job before the mark (the job is pushed
first), and its outcome write locks rows in another order than the mark's multi-row UPDATE: the
two deadlocked in the full benchmark run (a refire of 100,000 events failed with
``DeadlockDetectedError``)."""

from __future__ import annotations

import asyncio

import asyncpg
import redis

from core.db import create_pool
from processor.outbox import enqueue_created
from tests.workers import rows


async def test_marking_queued_skips_rows_a_worker_holds_instead_of_waiting(
        plain_db_url: str, redis_url: str) -> None:
    with rows.connect(plain_db_url) as conn:
        trigger_id = rows.insert_trigger(conn)
        action_id = rows.insert_action(conn, trigger_id, {"url": "https://example.com/hook"})
        free, held = (rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                           event_id=rows.transfer_event(conn, log_index=n),
                                           status="pending") for n in range(2))
    worker = await asyncpg.connect(plain_db_url)
    pool = await create_pool(plain_db_url, min_size=1, max_size=2)
    client = redis.Redis.from_url(redis_url)
    try:
        async with worker.transaction():
            # A worker recording an outcome: the row is locked until its transaction ends.
            await worker.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE id = $1", held)
            assert await asyncio.wait_for(
                enqueue_created(pool, client, [free, held]), timeout=5)
        states = {r["id"]: r["status"] for r in await worker.fetch(
            "SELECT id, status FROM deliveries WHERE id = ANY($1::bigint[])", [free, held])}
        # The held row stays pending: the mark is a hint for the sweep, and the worker has it.
        assert states == {free: "queued", held: "pending"}
    finally:
        client.close()
        await pool.close()
        await worker.close()

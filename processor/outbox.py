"""The transactional outbox: delivery rows are the record, RQ jobs only the transport.

Rows are created ``pending`` in the same transaction as the work that decided them (a batch, a
ripening, a reorg correction); after commit their ids are enqueued (``core.queue``) and the rows
marked ``queued``. When Redis is down or the process dies in between, the rows stay ``pending``
and :func:`sweep_outbox` enqueues them later; a ``queued`` row whose job was lost (Redis
flushed) is re-enqueued once its ``next_attempt_at`` (and its last enqueue) is more than
``STALE_QUEUED_SECONDS`` in the past and the delivery queue has no backlog.
Duplicate jobs are harmless: workers lock each row for an attempt and skip final ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import redis
import structlog

from core.leases import lease_free_sql
from core.queue import (
    JOB_BATCH_SIZE,
    QUEUE_NAME,
    REPLAY_JOB_BATCH_SIZE,
    REPLAY_QUEUE_NAME,
    enqueue_deliveries,
    worker_queues,
)
from processor import metrics

log = structlog.get_logger(__name__)

PENDING_GRACE_SECONDS = 5.0
# A due, unlocked ``queued`` row with an empty queue has no live job: its job was lost (Redis
# restarted empty) or its worker was killed mid-job (the job sits in RQ's started registry until
# its timeout). Ten seconds bounds that delay; an early guess costs one duplicate job, which the
# workers skip (row locks, final states).
STALE_QUEUED_SECONDS = 10.0
SWEEP_LIMIT = 5000

_INSERT_DELIVERIES = """
INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status, replay, event_committed_at)
SELECT u.action_id, u.trigger_id, u.event_id, $4, 'pending', $5, $6
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(action_id, trigger_id, event_id)
ON CONFLICT (action_id, event_id, kind) DO NOTHING
RETURNING id
"""

_INSERT_DEFERRED = """
INSERT INTO deferred_matches (action_id, trigger_id, event_id, chain_id, block_number, block_time,
                              ready_at_block, replay)
SELECT u.action_id, u.trigger_id, u.event_id, $7, u.block_number, u.block_time, u.ready_at, $8
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::timestamptz[],
            $6::bigint[]) AS u(action_id, trigger_id, event_id, block_number, block_time, ready_at)
WHERE NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.action_id = u.action_id AND d.event_id = u.event_id
                    AND d.kind = 'matched')
ON CONFLICT (action_id, event_id) DO NOTHING
"""

# One simple-protocol message, so one round trip: the statements form one implicit transaction,
# in which SET LOCAL applies. The ids are integers formatted by us (no user text).
# Rows a worker holds right now (it took the job before this mark and is writing its outcome)
# are skipped, not waited for: the mark is only a hint for the sweep, and waiting made a
# deadlock with the worker's multi-row outcome write, which locks rows in another order.
_MARK_QUEUED = """
SET LOCAL synchronous_commit = off;
UPDATE deliveries SET status = 'queued', queued_at = now()
WHERE id IN (SELECT id FROM deliveries WHERE id = ANY('{{{ids}}}'::bigint[]) AND status = 'pending'
             FOR UPDATE SKIP LOCKED)
"""

# Claimed with SKIP LOCKED so two processors never sweep the same rows; a worker's live lease
# (an attempt in flight) also keeps a row out of the sweep.
_CLAIM_PENDING = """
SELECT id FROM deliveries
WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1)
ORDER BY id LIMIT $2
FOR UPDATE SKIP LOCKED
"""

_CLAIM_STALE_QUEUED = f"""
SELECT id FROM deliveries
WHERE status = 'queued'
  AND next_attempt_at < now() - make_interval(secs => $1)
  AND (queued_at IS NULL OR queued_at < now() - make_interval(secs => $1))
  AND {lease_free_sql("deliveries")}
ORDER BY id LIMIT $2
FOR UPDATE SKIP LOCKED
"""

_REQUEUED = "UPDATE deliveries SET status = 'queued', queued_at = now() WHERE id = ANY($1::bigint[])"


# Every inserted delivery (and deferred match) runs Postgres's foreign-key checks on actions and
# triggers: cached SPI plans that the sessions' force_custom_plan (core.db.SESSION_SETTINGS)
# would plan again for every row, ~20 µs a delivery. Sent once a transaction's hypertable reads
# are done, it lets the rest of the transaction use generic plans (one round trip).
_GENERIC_PLANS_FROM_HERE = "SET LOCAL plan_cache_mode = auto"


async def use_generic_plans(conn: asyncpg.Connection) -> None:
    """Generic plans for the rest of the caller's transaction: call it after the transaction's
    last read of ``events`` (those want custom plans: chunk exclusion), before its inserts."""
    await conn.execute(_GENERIC_PLANS_FROM_HERE)


async def insert_deliveries(conn: asyncpg.Connection, *, action_ids: Sequence[int],
                            trigger_ids: Sequence[int], event_ids: Sequence[int],
                            kind: str = "matched", replay: bool = False,
                            committed_at: datetime | None = None) -> list[int]:
    """Create ``pending`` deliveries in the caller's transaction; return the ids of the rows
    actually created (pairs that already have a delivery of ``kind`` are skipped)."""
    if not event_ids:
        return []
    rows = await conn.fetch(_INSERT_DELIVERIES, action_ids, trigger_ids, event_ids, kind, replay,
                            committed_at)
    metrics.DELIVERIES_CREATED.labels(kind).inc(len(rows))
    return [row["id"] for row in rows]


async def insert_deferred(conn: asyncpg.Connection, *, chain_id: int, action_ids: Sequence[int],
                          trigger_ids: Sequence[int], event_ids: Sequence[int],
                          block_numbers: Sequence[int], block_times: Sequence[datetime],
                          ready_at: Sequence[int], replay: bool = False) -> None:
    """Park matches until the chain's checkpoint reaches ``ready_at`` (caller's transaction);
    pairs that already have a matched delivery or a deferred row are skipped."""
    if not event_ids:
        return
    await conn.execute(_INSERT_DEFERRED, action_ids, trigger_ids, event_ids, block_numbers,
                       block_times, ready_at, chain_id, replay)
    metrics.DEFERRED_CREATED.inc(len(event_ids))


async def push(redis_client: redis.Redis, delivery_ids: Sequence[int], *,
               queue_name: str = QUEUE_NAME) -> bool:
    """Enqueue jobs for ``delivery_ids`` (on ``queue_name``); ``False`` (logged) when Redis is
    unreachable."""
    if not delivery_ids:
        return True
    try:
        # Called inline, not in a thread: a healthy local Redis answers a pipeline in well under
        # a millisecond, and a thread hop costs about as much again (more on a busy machine).
        # A dead Redis blocks for at most the client's connect timeout, and the service then
        # stops trying for a while (Processor._enqueue).
        enqueue_deliveries(redis_client, delivery_ids, queue_name=queue_name,
                           batch_size=REPLAY_JOB_BATCH_SIZE if queue_name == REPLAY_QUEUE_NAME
                           else JOB_BATCH_SIZE)
    except redis.RedisError as error:
        log.warning("redis unavailable, deliveries stay pending", deliveries=len(delivery_ids),
                    error=str(error))
        return False
    return True


async def enqueue_created(pool: asyncpg.Pool, redis_client: redis.Redis,
                          delivery_ids: Sequence[int],
                          committed_at: Sequence[datetime | None] = (), *,
                          queue_name: str = QUEUE_NAME) -> bool:
    """After commit: enqueue freshly created deliveries and mark them ``queued``; ``False`` when
    Redis failed (they stay ``pending`` for the sweep). ``committed_at`` (per id, optional) feeds the
    commit → enqueue latency histogram. ``queue_name``: ``core.queue.REPLAY_QUEUE_NAME`` for a
    refire's deliveries (behind live ones)."""
    if not delivery_ids:
        return True
    if not await push(redis_client, delivery_ids, queue_name=queue_name):
        return False
    now = time.time()
    for moment in committed_at:
        if moment is not None:
            metrics.ENQUEUE_LATENCY.observe(max(0.0, now - moment.timestamp()))
    # pending → queued is only a hint for the sweep: losing it in a server crash means one
    # duplicate job later, which workers absorb; so this commit need not wait for the flush.
    async with pool.acquire() as conn:
        await conn.execute(_MARK_QUEUED.format(ids=",".join(str(int(i)) for i in delivery_ids)))
    return True


async def _queue_backlog(redis_client: redis.Redis) -> int | None:
    """Jobs waiting in the delivery queues (live and replay), or ``None`` when Redis is
    unreachable."""
    try:
        return int(await asyncio.to_thread(
            lambda: sum(queue.count for queue in worker_queues(redis_client))))
    except redis.RedisError:
        return None


async def sweep_outbox(pool: asyncpg.Pool, redis_client: redis.Redis, *,
                       pending_grace: float = PENDING_GRACE_SECONDS,
                       stale_queued: float = STALE_QUEUED_SECONDS,
                       limit: int = SWEEP_LIMIT) -> int:
    """Enqueue ``pending`` rows older than ``pending_grace`` and re-enqueue ``queued`` rows whose
    job must have been lost; return how many. Rows stay locked while Redis is written, so a
    failure rolls back to the previous state and nothing is marked queued without a job.

    A ``queued`` row is only presumed lost while the delivery queue is empty: with a backlog
    (workers slower than the processor, or stopped) its job is most likely still waiting, and
    re-enqueueing would only pile duplicates onto the backlog."""
    backlog = await _queue_backlog(redis_client)
    if backlog is None:
        return 0  # nothing can be enqueued now; the rows wait, the next sweep retries
    sweeps = [("pending", _CLAIM_PENDING, pending_grace)]
    if backlog == 0:
        sweeps.append(("lost", _CLAIM_STALE_QUEUED, stale_queued))
    total = 0
    for reason, query, age in sweeps:
        async with pool.acquire() as conn, conn.transaction():
            ids = [row["id"] for row in await conn.fetch(query, age, limit)]
            if not ids or not await push(redis_client, ids):
                continue
            await conn.execute(_REQUEUED, ids)
        metrics.REQUEUED.labels(reason).inc(len(ids))
        log.info("deliveries enqueued by sweep", reason=reason, deliveries=len(ids))
        total += len(ids)
    return total

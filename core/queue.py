"""The Redis/RQ transport between the processor and the workers.

Postgres (``deliveries``) is the record; RQ only carries delivery ids. A job carries a batch of
delivery ids (per-job overhead dominates RQ throughput); each delivery keeps its own row and
outcome. Losing a job (Redis flushed, down) delays a delivery: the processor's sweep re-enqueues
``pending`` and stale ``queued`` rows, and workers skip anything already final.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis import Redis
from rq import Queue, Retry

QUEUE_NAME = "blockhook-deliveries"
# A refire's deliveries (a new trigger's history, possibly 100,000s at once) wait in a queue of
# their own that workers take from only when the live queue is empty: live webhooks do not
# queue behind history (scripts/bench.py refire measures it).
REPLAY_QUEUE_NAME = "blockhook-deliveries-replay"
# Smaller jobs there: a live job waits at most for the history job a worker is in (one chunk of
# the default WORKER_BATCH_SIZE instead of four).
REPLAY_JOB_BATCH_SIZE = 50
# Redis hash of webhook endpoints whose circuit breaker holds deliveries back (field: host:port,
# value: JSON written by the worker process that saw it; workers.runtime), read by status.
ENDPOINT_STATE_KEY = "blockhook:endpoint-circuits"
# An entry not refreshed for this long is stale (its worker stopped).
ENDPOINT_STATE_TTL_SECONDS = 60.0
JOB_FUNCTION = "workers.jobs.deliver_batch"
# RQ costs ~27 Redis round trips per job whatever its size; 200 ids per job took the delivery
# benchmark from ~1,100-1,800 to ~2,000-2,300 deliveries/s (2 workers) and worker CPU from ~340 to
# ~265 µs per delivery (docs/benchmarks.md). A job is sent in WORKER_BATCH_SIZE chunks.
JOB_BATCH_SIZE = 200
# Backstop for a stuck job: 4 chunks of the default WORKER_BATCH_SIZE (50), each bounded by the
# action timeout cap (300 s), plus margin.
JOB_TIMEOUT_SECONDS = 1500
# A job that raises (its database went away mid-batch, say) is run again by RQ's scheduler after
# these pauses, so a Postgres restart delays deliveries by seconds, not until the processor's
# lost-job sweep. Webhook failures never raise: they are scheduled by the worker itself.
JOB_RETRY_INTERVALS = (1, 2, 5, 10, 30, 60)
JOB_RETRY_MAX = 30


def job_retry() -> Retry:
    return Retry(max=JOB_RETRY_MAX, interval=list(JOB_RETRY_INTERVALS))


def delivery_queue(redis: Redis, name: str = QUEUE_NAME) -> Queue:
    return Queue(name, connection=redis)


def worker_queues(redis: Redis) -> list[Queue]:
    """The queues a worker listens on, highest priority first: RQ takes the next job from the
    first non-empty one, so replayed history only uses workers the live queue leaves idle."""
    return [delivery_queue(redis), delivery_queue(redis, REPLAY_QUEUE_NAME)]


def enqueue_deliveries(redis: Redis, delivery_ids: Sequence[int], *,
                       batch_size: int = JOB_BATCH_SIZE, queue_name: str = QUEUE_NAME) -> int:
    """Enqueue jobs for ``delivery_ids`` in batches, in one Redis pipeline; return job count.
    Raises ``redis.RedisError`` when Redis is unreachable (callers keep the rows ``pending``)."""
    if not delivery_ids:
        return 0
    queue = delivery_queue(redis, queue_name)
    jobs = [
        Queue.prepare_data(JOB_FUNCTION, args=(list(delivery_ids[i:i + batch_size]),),
                           kwargs={"history": True} if queue_name == REPLAY_QUEUE_NAME else None,
                           timeout=JOB_TIMEOUT_SECONDS, result_ttl=0, failure_ttl=86400,
                           retry=job_retry())
        for i in range(0, len(delivery_ids), batch_size)
    ]
    with redis.pipeline() as pipe:
        queue.enqueue_many(jobs, pipeline=pipe)
        pipe.execute()
    return len(jobs)

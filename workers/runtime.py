"""The per-process delivery runtime: one event loop, one database pool, one HTTP client, one
Redis connection, kept for the life of the worker process and reused by every job.

RQ jobs are plain synchronous functions, so the runtime is found through this module:
``configure(settings)`` (the worker's ``main``) or ``install(runtime)`` (tests), and ``current()``
builds it on the first job. Building it lazily matters: RQ forks its scheduler process when the
worker starts, and a child that inherited our database sockets would keep row locks alive after
the worker itself was killed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import redis
import structlog
from rq import Queue

from core import db
from core.queue import (
    JOB_FUNCTION,
    JOB_TIMEOUT_SECONDS,
    delivery_queue,
    enqueue_deliveries,
    job_retry,
)
from core.settings import WorkerSettings, load_settings
from workers import metrics
from workers.attempt import RetryPolicy
from workers.batch import BatchReport, Leases, deliver_batch_once
from workers.delivery import WebhookClient

log = structlog.get_logger(__name__)

# Open rows a job could not claim (someone else's lock, or the job came early) are checked
# again after these delays, at most this many times (a processor transaction holds a lock for
# milliseconds; a worker mid-attempt records the row itself; the sweep is the last resort).
RECHECK_DELAYS: Final = (1.0, 2.0, 4.0)
# Before that, rows locked right now are retried in-process after these pauses.
QUICK_RECLAIM_PAUSES: Final = (0.02, 0.1)
APPLICATION_NAME: Final = "blockhook-workers"


class Runtime:
    """Everything a delivery job needs, bound to one event loop. Create with :meth:`start`."""

    def __init__(self, settings: WorkerSettings, *, loop: asyncio.AbstractEventLoop,
                 pool: asyncpg.Pool, client: WebhookClient, redis_client: redis.Redis) -> None:
        self.settings = settings
        self.loop = loop
        self.pool = pool
        self.client = client
        self.redis = redis_client
        self.queue: Queue = delivery_queue(redis_client)
        self.policy = RetryPolicy(schedule=settings.retry_delays,
                                  max_attempts=settings.webhook_max_attempts,
                                  default_timeout=settings.webhook_timeout)
        self.keyring = settings.keyring()
        self.leases = Leases()

    @classmethod
    def start(cls, settings: WorkerSettings, *, redis_client: redis.Redis | None = None) -> Runtime:
        """Open the pool and the HTTP client on a new event loop. Raises ``ConfigError`` when
        the database is unreachable."""
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_lost_connections)

        async def open_resources() -> tuple[asyncpg.Pool, WebhookClient]:
            pool = await db.create_pool(
                settings.database_url, min_size=1, max_size=2,
                server_settings={"application_name": APPLICATION_NAME, **settings.db_timeouts()})
            return pool, WebhookClient(allow_private=settings.webhook_allow_private)

        try:
            pool, client = loop.run_until_complete(open_resources())
        except BaseException:
            loop.close()
            raise
        return cls(settings, loop=loop, pool=pool, client=client,
                   redis_client=redis_client or redis.Redis.from_url(settings.redis_url))

    def close(self) -> None:
        async def close_resources() -> None:
            await self.client.close()
            await self.pool.close()

        self.loop.run_until_complete(close_resources())
        self.loop.close()

    def deliver(self, delivery_ids: Sequence[int], *, lock_retries: int = 0) -> dict[str, int]:
        """Deliver ``delivery_ids`` in batches of ``WORKER_BATCH_SIZE``; after each batch's
        commit, schedule its retries and enqueue what it created. Returns counts by outcome."""
        totals: dict[str, int] = defaultdict(int)
        size = self.settings.worker_batch_size
        for start in range(0, len(delivery_ids), size):
            chunk = list(delivery_ids[start:start + size])
            for pause in (*QUICK_RECLAIM_PAUSES, None):
                report = self.loop.run_until_complete(deliver_batch_once(
                    self.pool, client=self.client, policy=self.policy, delivery_ids=chunk,
                    leases=self.leases, keyring=self.keyring))
                for outcome in report.outcomes:
                    totals[outcome.status] += 1
                now = time.time()
                locked_now = [i for i, due in report.unclaimed.items() if due <= now]
                if pause is None or not locked_now:
                    break
                # Most likely the processor's short "mark queued" transaction: try again soon
                # in-process rather than a whole RQ scheduler tick (≥ 1 s) later.
                self._after_commit(report, lock_retries=lock_retries, reclaiming=locked_now)
                chunk = locked_now
                time.sleep(pause)
            self._after_commit(report, lock_retries=lock_retries)
        return dict(totals)

    def _after_commit(self, report: BatchReport, *, lock_retries: int,
                      reclaiming: Sequence[int] = ()) -> None:
        """Redis side effects of a committed batch. A Redis failure here loses no delivery: the
        rows are ``queued`` in Postgres and the processor's sweep re-enqueues stale ones.
        ``reclaiming``: unclaimed ids the caller retries itself (not rescheduled here)."""
        if reclaiming:
            report.unclaimed = {i: due for i, due in report.unclaimed.items()
                                if i not in set(reclaiming)}
        try:
            with self.redis.pipeline() as pipe:
                self._schedule_retries(report, pipe)
                if report.unclaimed and lock_retries < len(RECHECK_DELAYS):
                    recheck_at = max(time.time() + RECHECK_DELAYS[lock_retries],
                                     *report.unclaimed.values())
                    self._schedule(pipe, list(report.unclaimed), recheck_at,
                                   lock_retries=lock_retries + 1)
                pipe.execute()
            if report.removed_created:
                enqueue_deliveries(self.redis, report.removed_created)
        except redis.RedisError as error:
            log.warning("could not schedule follow-up jobs; the sweep will re-enqueue them",
                        error=str(error), retries=len(report.retries),
                        removed=len(report.removed_created))

    def _schedule_retries(self, report: BatchReport, pipe: redis.client.Pipeline) -> None:
        delays = {o.delivery_id: o.delay for o in report.outcomes if o.delay is not None}
        groups: dict[float, list[int]] = defaultdict(list)
        for delivery_id in report.retries:
            groups[delays[delivery_id]].append(delivery_id)
        for ids in groups.values():
            # Not before the latest due time of the group: no row may find its job early.
            due = max(report.retries[i] for i in ids)
            self._schedule(pipe, ids, due)
            metrics.RETRIES_SCHEDULED.inc(len(ids))

    def _schedule(self, pipe: redis.client.Pipeline, ids: list[int], due: float, *,
                  lock_retries: int = 0) -> None:
        kwargs = {"lock_retries": lock_retries} if lock_retries else {}
        job = self.queue.create_job(JOB_FUNCTION, args=(ids,), kwargs=kwargs,
                                    timeout=JOB_TIMEOUT_SECONDS, result_ttl=0, failure_ttl=86400,
                                    retry=job_retry())
        # RQ keeps whole seconds (it truncates): round up so the job is never early.
        self.queue.schedule_job(job, datetime.fromtimestamp(math.ceil(due), UTC), pipeline=pipe)


def _quiet_lost_connections(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncpg's pool leaves a never-awaited future failing with ``ConnectionError`` when the
    server drops its connections (a restart): expected, and already handled (the job raises and
    is retried). Log it as a warning without a traceback; anything else goes to the default."""
    error = context.get("exception")
    if isinstance(error, ConnectionError) and "connection_lost" in str(error):
        log.warning("database connection lost; the pool reconnects", error=str(error))
        return
    loop.default_exception_handler(context)


_current: Runtime | None = None
_settings: WorkerSettings | None = None
_redis: redis.Redis | None = None


def configure(settings: WorkerSettings, *, redis_client: redis.Redis | None = None) -> None:
    """Use ``settings`` (and the worker's Redis connection) when the runtime is first needed."""
    global _settings, _redis
    _settings, _redis = settings, redis_client


def close() -> None:
    """Close and forget the runtime, if one was built."""
    global _current
    if _current is not None:
        _current.close()
        _current = None


def install(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one jobs of this process use (``None`` uninstalls)."""
    global _current
    _current = runtime


def current() -> Runtime:
    """The installed runtime, or one built from the environment on first use."""
    global _current
    if _current is None:
        _current = Runtime.start(_settings or load_settings(WorkerSettings), redis_client=_redis)
    return _current

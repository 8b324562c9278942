"""The per-process delivery runtime: one event loop (in a thread of its own), one database pool,
one HTTP client, one Redis connection and the :class:`~workers.dispatch.Dispatcher`, kept for
the life of the worker process and shared by every job.

A job only hands its ids to the dispatcher (claimed and started, or parked per endpoint) and
returns: the POSTs go on in the background thread, so the next job starts at once whatever the
endpoints do. :meth:`Runtime.close` (worker shutdown, end of a burst) waits for what is in
flight.

RQ jobs are plain synchronous functions, so the runtime is found through this module:
``configure(settings)`` (the worker's ``main``) or ``install(runtime)`` (tests), and ``current()``
builds it on the first job. Building it lazily matters: RQ forks its scheduler process when the
worker starts, and a child that inherited our database sockets would keep row locks alive after
the worker itself was killed.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import asyncpg
import redis
import structlog
from rq import Queue

from core import db
from core.backoff import Backoff
from core.leases import holder_lock_key_sql
from core.queue import (
    ENDPOINT_STATE_KEY,
    JOB_FUNCTION,
    JOB_TIMEOUT_SECONDS,
    delivery_queue,
    enqueue_deliveries,
    job_retry,
)
from core.settings import WorkerSettings, load_settings
from workers import metrics
from workers.attempt import RetryPolicy
from workers.delivery import WebhookClient
from workers.dispatch import BatchReport, Dispatcher, DispatchSettings, Leases
from workers.endpoints import Endpoint

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Open rows a job could not claim (someone else's lock, or the job came early) are checked
# again after these delays, at most this many times (a processor transaction holds a lock for
# milliseconds; a worker mid-attempt records the row itself; the sweep is the last resort).
RECHECK_DELAYS: Final = (1.0, 2.0, 4.0)
# Before that, rows locked right now are retried in-process after these pauses.
QUICK_RECLAIM_PAUSES: Final = (0.02, 0.1)
APPLICATION_NAME: Final = "blockhook-workers"
# The delivery statements look rows up by id (deliveries, and events by id: no time bound a
# custom plan could prune hypertable chunks with), so a cached generic plan serves them as well
# as a fresh one: Postgres's default (``auto``) instead of the ``force_custom_plan`` of
# core.db.SESSION_SETTINGS, which planned the claim afresh on every call (~0.65 ms, about 30 %
# of the database's time per delivery in the delivery benchmark).
WORKER_PLAN_CACHE_MODE: Final = "auto"
# How long close() waits for deliveries in flight (their POST timeouts bound it in practice).
CLOSE_TIMEOUT_SECONDS: Final = 330.0


class Runtime:
    """Everything a delivery job needs, bound to one event loop. Create with :meth:`start`."""

    def __init__(self, settings: WorkerSettings, *, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread, pool: asyncpg.Pool, client: WebhookClient,
                 redis_client: redis.Redis, leases: Leases, holder: LeaseHolder,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.loop = loop
        self.thread = thread
        self.pool = pool
        self.client = client
        self.redis = redis_client
        self.queue: Queue = delivery_queue(redis_client)
        self.policy = RetryPolicy(schedule=settings.retry_delays,
                                  max_attempts=settings.webhook_max_attempts,
                                  default_timeout=settings.webhook_timeout)
        self.keyring = settings.keyring()
        self.on_fatal = on_fatal
        self.leases = leases
        self.holder = holder
        self.dispatcher = Dispatcher(
            pool=pool, client=client, policy=self.policy, leases=self.leases,
            keyring=self.keyring,
            settings=DispatchSettings(
                endpoint_concurrency=settings.worker_endpoint_concurrency,
                circuit_failures=settings.worker_circuit_failures,
                probe_interval=settings.worker_circuit_probe_interval),
            after_commit=lambda report: self._after_commit(report, lock_retries=0),
            publish=self._publish_endpoints, on_fatal=on_fatal)
        self._run(self._start_dispatcher())

    async def _start_dispatcher(self) -> None:
        self.dispatcher.start()
        self.holder.start()

    @classmethod
    def start(cls, settings: WorkerSettings, *, redis_client: redis.Redis | None = None,
              on_fatal: Callable[[str], None] | None = None) -> Runtime:
        """Open the pool and the HTTP client on a new event loop running in its own thread.
        Raises ``ConfigError`` when the database is unreachable."""
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_lost_connections)
        thread = threading.Thread(target=loop.run_forever, name="blockhook-deliveries",
                                  daemon=True)
        thread.start()

        leases = Leases()
        holder = LeaseHolder(settings, leases.worker_id)

        async def open_resources() -> tuple[asyncpg.Pool, WebhookClient]:
            await holder.acquire()
            pool = await db.create_pool(
                settings.database_url, min_size=1, max_size=4,
                server_settings={"application_name": APPLICATION_NAME,
                                 "plan_cache_mode": WORKER_PLAN_CACHE_MODE,
                                 **settings.db_timeouts()})
            return pool, WebhookClient(allow_private=settings.webhook_allow_private)

        try:
            pool, client = asyncio.run_coroutine_threadsafe(open_resources(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            raise
        return cls(settings, loop=loop, thread=thread, pool=pool, client=client,
                   redis_client=redis_client or redis.Redis.from_url(settings.redis_url),
                   leases=leases, holder=holder, on_fatal=on_fatal)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until nothing is in flight (see :meth:`Dispatcher.drain`)."""
        return self._run(self.dispatcher.drain(timeout))

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Finish the deliveries in flight (up to ``timeout``), then close everything."""
        async def close_resources() -> None:
            await self.dispatcher.close(timeout)
            await self.client.close()
            await self.pool.close()
            await self.holder.close()

        try:
            self._run(close_resources())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def deliver(self, delivery_ids: Sequence[int], *, lock_retries: int = 0) -> dict[str, int]:
        """Hand ``delivery_ids`` to the dispatcher in chunks of ``WORKER_BATCH_SIZE``; rows
        locked by another transaction right now are tried again in-process, then rechecked by
        a scheduled job. Returns how many were claimed and parked.

        The whole job goes to the event loop in one hop (the chunks and the quick retries run
        there): each hop wakes this thread through a lock and costs more than a claim."""
        handed = self._run(self._hand_over(list(delivery_ids)))
        for unclaimed in handed.unclaimed:
            self._after_commit(BatchReport(unclaimed=unclaimed), lock_retries=lock_retries)
        if handed.error is not None:
            error = handed.error
            # An SQL or schema error also stops the worker (``on_fatal``): retrying the job
            # could not help. Any error fails the job (rows stay open).
            if (isinstance(error, asyncpg.PostgresError) and not db.is_transient(error)
                    and self.on_fatal is not None):
                self.on_fatal(str(db.DatabaseBroken.from_error(error)))
            raise error
        return dict(handed.totals)

    async def _hand_over(self, delivery_ids: list[int]) -> _HandedOver:
        """:meth:`deliver`'s work on the event loop. A database error ends it; what the chunks
        before did is returned with the error (their rechecks are still scheduled)."""
        handed = _HandedOver()
        size = self.settings.worker_batch_size
        try:
            for start in range(0, len(delivery_ids), size):
                chunk = delivery_ids[start:start + size]
                unclaimed: dict[int, float] = {}
                for pause in (*QUICK_RECLAIM_PAUSES, None):
                    submitted = await self.dispatcher.submit(chunk)
                    handed.totals["claimed"] += submitted.claimed
                    handed.totals["parked"] += submitted.parked
                    unclaimed.update(submitted.unclaimed)
                    now = time.time()
                    locked_now = [i for i, due in submitted.unclaimed.items() if due <= now]
                    if pause is None or not locked_now:
                        break
                    # Most likely the processor's short "mark queued" transaction: try again
                    # soon in-process rather than a whole RQ scheduler tick (≥ 1 s) later.
                    for delivery_id in locked_now:
                        unclaimed.pop(delivery_id, None)
                    chunk = locked_now
                    await asyncio.sleep(pause)
                if unclaimed:
                    handed.unclaimed.append(unclaimed)
        except Exception as error:
            handed.error = error
        return handed

    def _after_commit(self, report: BatchReport, *, lock_retries: int) -> None:
        """Redis side effects of committed outcomes (retries, ``removed`` deliveries) or of a
        claim (rechecks of rows it could not lock). A Redis failure here loses no delivery: the
        rows are ``queued`` in Postgres and the processor's sweep re-enqueues stale ones."""
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


    def _publish_endpoints(self, endpoints: dict[str, Endpoint]) -> None:
        """Write this process's open circuits to Redis for ``scripts/status.py`` (called from
        a thread; a Redis failure only delays the view)."""
        now = time.time()
        opened: dict[Any, Any] = {key: json.dumps({
            "circuit": str(e.circuit), "failures": e.consecutive_failures,
            "waiting": e.parked, "in_flight": e.in_flight, "last_error": e.last_error,
            "open_for_seconds": round(time.monotonic() - e.opened_at, 1),
            "probe_interval": e.probe_interval, "worker": self.leases.worker_id,
            "updated": now}) for key, e in endpoints.items() if e.is_open}
        with self.redis.pipeline() as pipe:
            if opened:
                pipe.hset(ENDPOINT_STATE_KEY, mapping=opened)
            for key, e in endpoints.items():
                if not e.is_open:
                    pipe.hdel(ENDPOINT_STATE_KEY, key)
            pipe.execute()


@dataclass
class _HandedOver:
    """What :meth:`Runtime._hand_over` did with a job's ids."""

    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # per chunk: delivery id → unix time due, for rows it could not claim (rechecked later)
    unclaimed: list[dict[int, float]] = field(default_factory=list)
    error: Exception | None = None


class LeaseHolder:
    """The connection holding this process's advisory lock for its whole life: other workers
    take over its leases as soon as it is gone (:mod:`core.leases`). Re-acquired with backoff
    when the connection is lost (a database restart); meanwhile a lease of ours may be taken
    over and sent twice — at-least-once, same ``webhook-id``."""

    CHECK_SECONDS = 1.0

    def __init__(self, settings: WorkerSettings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        conn = await db.connect(self.settings.database_url, server_settings={
            "application_name": f"{APPLICATION_NAME}-holder", **self.settings.db_timeouts()})
        try:
            await conn.execute(f"SELECT pg_advisory_lock({holder_lock_key_sql('$1::text')})",
                               self.worker_id)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        while True:
            await asyncio.sleep(self.CHECK_SECONDS)
            if self._conn is not None and not self._conn.is_closed():
                continue
            try:
                await self.acquire()
                backoff.reset()
                log.info("lease holder lock re-acquired", worker=self.worker_id)
            except Exception as error:
                delay = backoff.next_delay()
                log.warning("cannot re-acquire the lease holder lock, retrying",
                            error=str(error) or repr(error), retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()


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
_on_fatal: Callable[[str], None] | None = None


def configure(settings: WorkerSettings, *, redis_client: redis.Redis | None = None,
              on_fatal: Callable[[str], None] | None = None) -> None:
    """Use ``settings`` (and the worker's Redis connection) when the runtime is first needed;
    ``on_fatal(reason)`` is called if the delivery engine cannot go on."""
    global _settings, _redis, _on_fatal
    _settings, _redis, _on_fatal = settings, redis_client, on_fatal


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


def installed() -> Runtime | None:
    """The runtime of this process, if one was built or installed."""
    return _current


def current() -> Runtime:
    """The installed runtime, or one built from the environment on first use."""
    global _current
    if _current is None:
        _current = Runtime.start(_settings or load_settings(WorkerSettings), redis_client=_redis,
                                 on_fatal=_on_fatal)
    return _current

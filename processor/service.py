"""The processor's main loop: wake on NOTIFY or the sweep timer, then do whatever is due.

Every unit of work (a claim of batches, a ripening, a correction, an outbox sweep) is one
transaction followed by an enqueue, so stopping between units loses and duplicates nothing.
Database or Redis outages are transient: the loop backs off and retries; the LISTEN connection
reconnects on its own and its ``"reconnected"`` wake-up triggers a full sweep. SQL and schema
errors (a missing column, a type error: :func:`core.db.is_transient`) are not: one line naming
the query and the error, and the process exits 1 (no retry loop hiding a bug). A background
sweep that fails unexpectedly is logged and tried again at the next interval; a listener or
sweeper task that ends anyway ends the processor (exit non-zero) so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import redis
import structlog

from core.backoff import Backoff
from core.db import DatabaseBroken, is_transient
from processor import metrics
from processor.batches import process_batches
from processor.confirmations import ripen_deferred
from processor.corrections import correct_reorgs
from processor.listener import Wakeups, listen, sleep_or_stop
from processor.outbox import enqueue_created, sweep_outbox
from processor.registry import TriggerRegistry, load_registry
from retention.runner import RetentionSchedule

log = structlog.get_logger(__name__)

REDIS_RETRY_SECONDS = 5.0

# Custom plans come with every core.db connection (see core.db.SESSION_SETTINGS).
POOL_SERVER_SETTINGS = {"application_name": "blockhook-processor"}
# InternalClientError: a connection whose protocol state broke mid-restart (seen in the e2e
# Postgres-restart scenario) — reconnect like any other lost connection.
TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
             TimeoutError, redis.RedisError)

_LAG = """
SELECT count(*) AS batches, coalesce(sum(row_count), 0) AS events,
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS seconds
FROM event_batches WHERE processed_at IS NULL
"""

# The open deliveries (the partial index ix_deliveries_open): the retry backlog for dashboards.
_OPEN_DELIVERIES = """
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'queued' AND attempts = 0) AS queued,
       count(*) FILTER (WHERE status = 'queued' AND attempts > 0) AS retrying
FROM deliveries WHERE status IN ('pending', 'queued')
"""


def _raise_if_permanent(error: BaseException) -> None:
    """Turn an SQL or schema error into :class:`DatabaseBroken` (exit 1, one line)."""
    if isinstance(error, asyncpg.PostgresError) and not is_transient(error):
        raise DatabaseBroken.from_error(error) from error


class Processor:
    """One processor instance; any number may run against the same database."""

    def __init__(self, *, database_url: str, pool: asyncpg.Pool, redis_client: redis.Redis,
                 batch_size: int, sweep_interval: float,
                 retention: RetentionSchedule | None = None) -> None:
        self.database_url = database_url
        self.pool = pool
        self.redis = redis_client
        self.batch_size = batch_size
        self.sweep_interval = sweep_interval
        self.registry = TriggerRegistry()
        self.wakeups = Wakeups()
        self._registry_stale = True
        self._redis_retry_at = 0.0
        self.retention = retention

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; returns after finishing the current unit of work.

        New batches are handled in this loop as soon as a wake-up arrives; the periodic sweep
        runs as a concurrent task so housekeeping never delays fresh events (every unit of work
        claims its rows with SKIP LOCKED, so the two never step on each other)."""
        listener = asyncio.create_task(listen(self.database_url, self.wakeups, stop))
        stopper = asyncio.create_task(self._wake_on(stop))
        sweeper: asyncio.Task[None] | None = None
        backoff = Backoff(base=0.2, cap=5.0)
        next_sweep = 0.0  # sweep at start
        try:
            while not stop.is_set():
                reasons = await self.wakeups.take(max(0.0, next_sweep - time.monotonic()))
                if stop.is_set():
                    break
                if listener.done():
                    listener.result()  # a bug in the listener must not leave us deaf: re-raise
                    raise RuntimeError("the LISTEN task ended unexpectedly")
                if sweeper is not None and sweeper.done():
                    sweeper.result()  # errors are handled inside; only a fatal one re-raises
                    sweeper = None
                if reasons & {"reconnected", "triggers"}:
                    self._registry_stale = True
                if sweeper is None and ("reconnected" in reasons
                                        or time.monotonic() >= next_sweep):
                    sweeper = asyncio.create_task(self._background_sweep())
                    next_sweep = time.monotonic() + self.sweep_interval
                try:
                    await self.step(stop, sweep=False, reasons=reasons)
                except TRANSIENT as error:
                    _raise_if_permanent(error)
                    delay = backoff.next_delay()
                    log.warning("processing failed, retrying", error=str(error) or repr(error),
                                retry_in=round(delay, 2))
                    self.wakeups.post("retry")
                    await sleep_or_stop(stop, delay)
                    continue
                backoff.reset()
        finally:
            if sweeper is not None:
                with contextlib.suppress(*TRANSIENT, DatabaseBroken):
                    await sweeper  # a unit of work: let it finish
            stopper.cancel()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            with contextlib.suppress(asyncio.CancelledError):
                await stopper

    async def _background_sweep(self) -> None:
        try:
            await self.sweep()
        except TRANSIENT as error:
            _raise_if_permanent(error)
            # The next sweep (or wake-up) retries; nothing was half-done (one tx per unit).
            log.warning("sweep failed, will retry", error=str(error) or repr(error))
        except Exception:
            # A bug hit by some row must not stop the safety net for good: log, try again later.
            log.exception("sweep failed unexpectedly, will retry")

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.wakeups.post("stop")

    async def step(self, stop: asyncio.Event, *, sweep: bool, reasons: set[str]) -> None:
        """One round after a wake-up: reload triggers if stale, drain batches, then ripen and
        correct if the wake-up asks for it; with ``sweep``, also the full sweep, inline."""
        if self._registry_stale:
            async with self.pool.acquire() as conn:
                self.registry = await load_registry(conn)
            self._registry_stale = False
            metrics.INVALID_TRIGGERS.set(len(self.registry.invalid))
            log.info("triggers loaded", valid=len(self.registry.triggers),
                     invalid=len(self.registry.invalid))
        await self.drain(stop)
        # Deferred matches only exist for triggers with confirmations; without any, the sweep
        # alone clears leftovers (e.g. of a trigger that was disabled).
        if self.registry.needs_checkpoints and reasons & {"checkpoints", "events", "retry"}:
            await self.ripen()
        if "reorgs" in reasons:
            await self.correct(recheck=False)
        if sweep:
            await self.sweep()

    async def sweep(self) -> None:
        """Everything regardless of wake-ups: ripen, correct reorgs (recent ones again),
        enqueue what was left pending or lost, run retention when due, and refresh the lag
        gauges."""
        await self.ripen()
        await self.correct(recheck=True)
        await sweep_outbox(self.pool, self.redis)
        if self.retention is not None:
            # One slice of at most a second (one runner at a time, advisory lock; transient
            # errors are logged and retried inside): retention.runner.RetentionSchedule.
            await self.retention.run_if_due(self.pool)
        async with self.pool.acquire() as conn:
            lag = await conn.fetchrow(_LAG)
            open_deliveries = await conn.fetchrow(_OPEN_DELIVERIES)
        metrics.BATCH_LAG_BATCHES.set(lag["batches"])
        metrics.BATCH_LAG_EVENTS.set(lag["events"])
        metrics.BATCH_LAG_SECONDS.set(lag["seconds"])
        for state, count in open_deliveries.items():
            metrics.OPEN_DELIVERIES.labels(state).set(count)

    async def correct(self, *, recheck: bool) -> None:
        async with self.pool.acquire() as conn:
            corrections = await correct_reorgs(conn, recheck=recheck)
        if corrections.cancelled or corrections.removed_ids:
            log.info("reorg corrections", reorgs=corrections.reorgs,
                     cancelled=corrections.cancelled, removed=len(corrections.removed_ids))
        await self._enqueue(corrections.removed_ids)

    async def drain(self, stop: asyncio.Event) -> int:
        """Process batches until none is left (or ``stop``); return the events processed."""
        events = 0
        # A trigger change ends the drain early so a long backlog is evaluated with the new
        # registry from the next claim on (the main loop reloads it first).
        while not stop.is_set() and not self.wakeups.pending("triggers"):
            async with self.pool.acquire() as conn:
                claim = await process_batches(conn, self.registry, max_events=self.batch_size)
            if not claim.batches:
                break
            events += claim.events
            await self._enqueue(claim.delivery_ids, claim.committed_at)
            if claim.delivery_ids:
                log.debug("batches processed", batches=claim.batches, events=claim.events,
                          deliveries=len(claim.delivery_ids))
            if not claim.more:
                # Batches committed meanwhile have notified us, or the sweep finds them; an
                # extra empty claim here would only delay the next wake-up.
                break
        return events

    async def _enqueue(self, delivery_ids: list[int],
                       committed_at: Sequence[datetime | None] = ()) -> None:
        """Enqueue after commit. After a Redis failure, new rows are left ``pending`` for
        ``REDIS_RETRY_SECONDS`` without trying (each try may block for the connect timeout,
        which would throttle the whole processor); the sweep enqueues them once Redis is back."""
        if not delivery_ids or time.monotonic() < self._redis_retry_at:
            return
        if not await enqueue_created(self.pool, self.redis, delivery_ids, committed_at):
            self._redis_retry_at = time.monotonic() + REDIS_RETRY_SECONDS

    async def ripen(self) -> None:
        while True:
            async with self.pool.acquire() as conn:
                ripened = await ripen_deferred(conn)
            if ripened.delivery_ids:
                log.info("confirmations reached", deliveries=len(ripened.delivery_ids),
                         dropped=ripened.dropped)
            await self._enqueue(ripened.delivery_ids)
            if not ripened.delivery_ids and not ripened.dropped:
                return

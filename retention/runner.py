"""A retention pass: delete what has aged out and nothing the pipeline still needs.

One pass, in order: processed ``event_batches`` older than ``RETENTION_EVENT_BATCHES``; final
``deliveries`` created before ``RETENTION_DELIVERIES``; corrected ``reorgs`` older than
``RETENTION_REORGS``; ``blocks`` below the indexer's window; ``events`` older than
``RETENTION_EVENTS`` (by block time: batched DELETEs on plain Postgres, ``drop_chunks`` on
TimescaleDB, see :mod:`retention.events`); then, where the TimescaleDB license allows it,
compression of chunks older than ``EVENTS_COMPRESS_AFTER``. What is protected whatever its age
is listed in :mod:`retention.guards`.

**One runner at a time**: a pass runs under a session advisory lock
(``core.db.advisory_key("retention", 0)``); a second runner (another processor, or
``scripts/retention.py``) finds it taken and skips (or waits, for the script).

**Slices and pacing**: a pass runs in slices of at most ``SLICE_SECONDS`` of work, each followed
by a pause ``PAUSE_FACTOR`` times as long (:func:`pause_after`), so retention takes at most a
quarter of one database session's time and live ingest keeps the rest (``bench.py retention``
measures the cost to ingest). Every slice is stateless (it starts from what is in the
database), so a slice interrupted anywhere — crash, SIGTERM, lost connection — leaves nothing
half-done, and the next one, in this process or another, carries on.

**Failure**: every statement is its own transaction, so a failure loses at most that statement,
which the next pass repeats. Database errors are returned to the caller (the processor's
schedule logs them and retries at the next pass); they never stop the pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import structlog

from core.db import advisory_key, storage_path
from retention import metrics
from retention.bookkeeping import (
    prune_blocks,
    prune_deliveries,
    prune_event_batches,
    prune_reorgs,
)
from retention.compression import CompressionState, compress_due, compressible, detect
from retention.events import LOCK_TIMEOUT_MS, Budget, drop_chunks, prune_plain
from retention.guards import chain_guards
from retention.inventory import table_sizes
from retention.policy import BLOCKS_MARGIN, RetentionPolicy

log = structlog.get_logger(__name__)

RETENTION_LOCK = advisory_key("retention", 0)
SLICE_SECONDS = 0.5
PAUSE_FACTOR = 3.0
TABLES = ("events", "event_batches", "deliveries", "reorgs", "blocks")


@dataclass
class PassReport:
    """What one slice (or, accumulated, one pass) did."""

    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    chunks_dropped: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    chunks_compressed: list[str] = field(default_factory=list)
    done: bool = True
    held_back_by: str | None = None
    deferred: list[str] = field(default_factory=list)

    def add(self, other: PassReport) -> None:
        for table, rows in other.deleted.items():
            self.deleted[table] += rows
        self.chunks_dropped += other.chunks_dropped
        self.bytes_freed += other.bytes_freed
        self.chunks_compressed += other.chunks_compressed
        self.done = other.done
        self.held_back_by = other.held_back_by or self.held_back_by
        self.deferred += other.deferred

    def as_log(self) -> dict[str, object]:
        return {"deleted": {t: n for t, n in self.deleted.items() if n},
                "chunks_dropped": len(self.chunks_dropped), "bytes_freed": self.bytes_freed,
                "chunks_compressed": len(self.chunks_compressed),
                "held_back_by": self.held_back_by, "deferred": self.deferred or None}


def pause_after(slice_took: float) -> float:
    """How long to wait after a slice that took ``slice_took`` seconds and did not finish."""
    return PAUSE_FACTOR * slice_took


async def try_lock(conn: asyncpg.Connection) -> bool:
    """Take the retention lock for this session, without waiting."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK))


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)


class RetentionRunner:
    """Runs slices of retention passes with one policy; remembers the compression state it
    detected (once per process: the license cannot change under a running server)."""

    def __init__(self, policy: RetentionPolicy, *, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> None:
        self.policy = policy
        self.lock_timeout_ms = lock_timeout_ms
        self.compression: CompressionState | None = None

    async def run(self, conn: asyncpg.Connection, *, slice_seconds: float | None = None,
                  now: datetime | None = None) -> PassReport | None:
        """One slice (the whole pass with ``slice_seconds=None``) on ``conn``, autocommit.
        ``None`` when another runner holds the retention lock. ``now`` replaces the database
        clock (tests simulate time with it)."""
        if not await try_lock(conn):
            return None
        try:
            return await self._slice(conn, Budget(slice_seconds), now)
        finally:
            try:
                await unlock(conn)
            except BaseException:
                # A session lock outlives the slice on a pooled connection (released without a
                # reset: core.db.create_pool), and every runner would skip from then on: close
                # the session instead, which releases it.
                conn.terminate()
                raise

    async def _slice(self, conn: asyncpg.Connection, budget: Budget,
                     now: datetime | None) -> PassReport:
        policy, report = self.policy, PassReport()
        storage = await storage_path(conn)
        if self.compression is None:
            self.compression = await detect(conn, enabled_by_settings=policy.compress_after
                                            is not None, enable=True)
            log.info(f"events compression {self.compression.state}",
                     detail=self.compression.detail)
        cutoffs = policy.cutoffs(now or await conn.fetchval("SELECT now()"))
        guards = await chain_guards(conn, reorg_window=policy.reorg_window)

        def stage(table: str, result: tuple[int, bool]) -> None:
            report.deleted[table] += result[0]
            report.done = report.done and result[1]

        if cutoffs.event_batches is not None:
            stage("event_batches", await prune_event_batches(
                conn, cutoff=cutoffs.event_batches, batch_rows=policy.batch_rows, budget=budget))
        if cutoffs.deliveries is not None:
            stage("deliveries", await prune_deliveries(
                conn, cutoff=cutoffs.deliveries, guards=guards, batch_rows=policy.batch_rows,
                budget=budget))
        if cutoffs.reorgs is not None:
            stage("reorgs", await prune_reorgs(conn, cutoff=cutoffs.reorgs,
                                               batch_rows=policy.batch_rows, budget=budget))
        stage("blocks", await prune_blocks(conn, keep_blocks=policy.reorg_window + BLOCKS_MARGIN,
                                           batch_rows=policy.batch_rows, budget=budget))
        if cutoffs.events is not None:
            if storage == "timescaledb":
                events = await drop_chunks(conn, cutoff=cutoffs.events,
                                           reorg_window=policy.reorg_window,
                                           lock_timeout_ms=self.lock_timeout_ms)
            else:
                events = await prune_plain(conn, cutoff=cutoffs.events,
                                           reorg_window=policy.reorg_window,
                                           batch_rows=policy.batch_rows, budget=budget)
            report.deleted["events"] += events.rows
            report.chunks_dropped += events.chunks
            report.bytes_freed += events.bytes
            report.done = report.done and events.done
            report.held_back_by = events.held_back_by.reason if events.held_back_by else None
            if events.deferred:
                report.deferred.append(events.deferred)
        if self.compression.active and cutoffs.compress is not None:
            # One chunk per slice (seconds each); a whole pass compresses all that are due.
            # Compression deletes nothing, so the guards do not apply: a compressed chunk stays
            # readable and writable.
            report.chunks_compressed = await compress_due(
                conn, before=cutoffs.compress, limit=1 if budget.deadline else 1_000_000)
            if report.chunks_compressed and await compressible(conn, before=cutoffs.compress):
                report.done = False
        for table, rows in report.deleted.items():
            metrics.DELETED.labels(table).inc(rows)
        metrics.CHUNKS.labels("dropped").inc(len(report.chunks_dropped))
        metrics.CHUNKS.labels("compressed").inc(len(report.chunks_compressed))
        if report.done:
            metrics.LAST_PASS.set(time.time())
            for table, (size, _) in (await table_sizes(conn, storage=storage)).items():
                metrics.TABLE_BYTES.labels(table).set(size)
        return report


# What a slice may raise that is not a bug: the database went away or refused (a lock timeout,
# a deadlock victim, a statement timeout). The next pass repeats the work.
TRANSIENT = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class RetentionSchedule:
    """The processor's hook: ``await schedule.run_if_due(pool)`` from its periodic sweep.

    Every ``interval`` seconds a pass starts; it runs as paced slices (one per call; calls during
    a pause do nothing) until it completes, then logs one summary line. A pass another runner holds the
    lock for is skipped (that runner does the work). Transient database errors are logged and
    retried at the next call; anything else is a bug and propagates."""

    def __init__(self, policy: RetentionPolicy, *, interval: float,
                 slice_seconds: float = SLICE_SECONDS) -> None:
        self.runner = RetentionRunner(policy)
        self.interval = interval
        self.slice_seconds = slice_seconds
        self._due = 0.0  # first pass at the first sweep
        self._pass: PassReport | None = None
        self._pass_started = 0.0

    async def run_if_due(self, pool: asyncpg.Pool) -> PassReport | None:
        """Run one slice if a pass is due or under way; the pass's report once it completes."""
        if not self.interval or time.monotonic() < self._due:
            return None
        if self._pass is None:
            self._pass, self._pass_started = PassReport(), time.monotonic()
        started = time.monotonic()
        try:
            async with pool.acquire() as conn:
                report = await self.runner.run(conn, slice_seconds=self.slice_seconds)
        except TRANSIENT as error:
            log.warning("retention slice failed, retrying", error=str(error) or repr(error))
            self._due = time.monotonic() + min(self.interval, 30.0)
            return None
        if report is None:  # another runner holds the lock and does this pass
            self._pass, self._due = None, time.monotonic() + self.interval
            return None
        self._pass.add(report)
        if not report.done:
            # Carry on after a pause (whatever the sweep interval): see pause_after.
            self._due = time.monotonic() + pause_after(time.monotonic() - started)
            return None
        finished, self._pass = self._pass, None
        self._due = time.monotonic() + self.interval
        log.info("retention pass", seconds=round(time.monotonic() - self._pass_started, 1),
                 **finished.as_log())
        return finished

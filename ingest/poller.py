"""The indexer loop for one chain (the commands in docs/reference.md; guarantees 1, 2, 9).

:class:`Indexer` owns one database connection, the *writing* connection, which holds the chain's
advisory writer lock for as long as it lives. Its loop:

1. read the head; target = head − ``CONFIRMATIONS`` (or the node's ``finalized``/``safe`` block,
   ``ingest.finality``);
2. behind the target: fetch ranges from the checkpoint + 1 (the next range is fetched while the
   current one is written), check that each range's first ``parentHash`` is the checkpoint's
   hash, and write blocks + events + checkpoint in one transaction per range;
3. at the target: re-check the last ``REORG_WINDOW`` stored hashes with one batched request,
   then sleep ``POLL_INTERVAL``.

With ``INGEST_ADDRESSES``, the registered factories and their children are asked for too, and a
range holding a child's creation is fetched with that child before it is stored
(``ingest.factories``). Ranges are stored only once proven complete (``ingest.fetch``, ``ingest.completeness``); any
mismatch goes to the reorg detector (``ingest.reorg``), which records a reorg only for a served,
linked and confirmed alternative chain — a node that is behind is never one. With an
``ingest.endpoints.EndpointPool`` as source, the state of every endpoint is written to
``rpc_endpoints`` every few seconds (for ``scripts/status.py``). A lost database connection drops
whatever was in flight (nothing is committed half-way: one transaction per range), reconnects
with backoff, takes the lock again (or waits as standby) and resumes from the checkpoint it reads
back. ``stop`` (SIGTERM/SIGINT) is honoured between transactions: a write in progress commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg
import structlog

from core.backoff import backoff_delay
from core.db import connect
from core.errors import ChainMismatch, ConfigError, ReorgTooDeep
from core.redact import redact_url
from core.settings import IngestSettings
from ingest.endpoints import EndpointPool
from ingest.factories import ChildWatch, fetch_with_children
from ingest.fetch import Batch, RangeFetcher, retry_rpc
from ingest.finality import check_finality_tag, ingest_target
from ingest.metrics import IngestMetrics
from ingest.ranges import RangeSizer
from ingest.reorg import Reorg, Unconfirmed, apply_reorg, detect, same_reorg
from ingest.rpc import ChainSource
from ingest.store import (
    Checkpoint,
    StoredBlock,
    load_checkpoint,
    prepare_connection,
    recent_blocks,
    save_endpoint_statuses,
    store_range,
    try_writer_lock,
    writer_lock_holder,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

ZERO_HASH = "0x" + "0" * 64
# blocks rows kept beyond the re-checked window: room for the window after a rollback.
BLOCKS_MARGIN = 32
# How often a standby retries the writer lock (it takes over within this plus one poll).
STANDBY_RETRY_SECONDS = 0.5
# How often the active indexer writes its endpoints' state to rpc_endpoints.
ENDPOINT_STATE_SECONDS = 5.0
# What a dropped database connection looks like from asyncpg.
DATABASE_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError,
                   asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, TimeoutError,
                   # A connection whose protocol state broke mid-restart ("cannot switch to
                   # state 12; another operation (2) is in progress"): reconnect, do not exit.
                   asyncpg.InternalClientError)


class Stopped(Exception):
    """``stop`` was set while waiting; unwinds to ``run()``, which returns normally."""


async def until_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T:
    """Await ``awaitable`` unless ``stop`` is set first (then cancel it and raise ``Stopped``)."""
    task = asyncio.ensure_future(awaitable)
    if stop.is_set():
        task.cancel()
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise Stopped


async def sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    if stop.is_set():
        raise Stopped


class Indexer:
    """Ingests one chain from ``source`` into ``settings.database_url``; see the module doc."""

    def __init__(self, settings: IngestSettings, source: ChainSource, *,
                 metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.source = source
        self.metrics = metrics or IngestMetrics(registry=None)
        self.chain_id = settings.chain_id or 0
        self.sizer = RangeSizer(settings.max_block_range)
        self.keep_blocks = settings.reorg_window + BLOCKS_MARGIN
        self.checkpoint: Checkpoint | None = None
        self._fetcher: RangeFetcher | None = None
        # With INGEST_ADDRESSES: the factories and children asked for besides (ingest.factories).
        self._watch: ChildWatch | None = None
        self._endpoints_saved_at = 0.0
        self._endpoints_due = False

    # ---------------------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set. Raises ``ChainMismatch`` (``CHAIN_ID`` disagrees with
        the node), ``ConfigError`` (database unreachable at start) and ``ReorgTooDeep``."""
        try:
            await self._run(stop)
        except Stopped:
            pass
        log.info("stopped", chain_id=self.chain_id)

    async def _run(self, stop: asyncio.Event) -> None:
        # Start-up: the node's chain id and the first database connection do not depend on each
        # other, so both are asked for at once (an unreachable database still ends the process
        # with its one line, once the chain id is known).
        opening = asyncio.ensure_future(self._connect(first=True))
        try:
            node_chain = await until_stopped(
                retry_rpc("eth_chainId", self.source.chain_id, metrics=self.metrics), stop)
            if self.settings.chain_id is not None and self.settings.chain_id != node_chain:
                raise ChainMismatch(f"CHAIN_ID={self.settings.chain_id} but the node at "
                                    f"{self._source_label()} reports chain {node_chain}")
        except BaseException:
            await _discard_connection(opening)
            raise
        self.chain_id = node_chain
        self.metrics.chain.info({"chain_id": str(node_chain)})
        if isinstance(self.settings.confirmations, str):
            await until_stopped(retry_rpc(
                f"eth_getBlockByNumber({self.settings.confirmations})",
                lambda: check_finality_tag(self.source, str(self.settings.confirmations)),
                chain_id=self.chain_id, metrics=self.metrics), stop)
        self._fetcher = RangeFetcher(self.source, self.sizer, addresses=self.settings.address_filter,
                                     metrics=self.metrics, chain_id=self.chain_id)
        if self.settings.address_filter:
            self._watch = ChildWatch(self.chain_id, self.settings.address_filter)
        connecting: asyncio.Future[asyncpg.Connection] | None = opening
        first_connection = True
        attempt = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                if connecting is not None:
                    opened, connecting = connecting, None
                    conn = await until_stopped(opened, stop)
                else:
                    conn = await self._connect(first=first_connection)
                first_connection = False
                await self._become_writer(conn, stop)
                attempt = 0
                await self._ingest(conn, stop)
                return  # stop was set between two transactions
            except DATABASE_ERRORS + (asyncpg.PostgresError,) as error:
                if isinstance(error, asyncpg.PostgresError) and not _is_connection_error(error):
                    raise
                attempt += 1
                delay = backoff_delay(attempt, base=0.5, cap=10.0)
                log.warning("database unavailable, reconnecting", chain_id=self.chain_id,
                            attempt=attempt, delay=round(delay, 2), reason=str(error) or type(error).__name__)
                await sleep_or_stop(delay, stop)
            finally:
                if conn is not None:
                    await _close_quietly(conn)

    def _source_label(self) -> str:
        if isinstance(self.source, EndpointPool):
            return self.source.answering()
        return redact_url(self.settings.rpc_url)

    async def _connect(self, *, first: bool) -> asyncpg.Connection:
        try:
            conn = await connect(self.settings.database_url)
        except ConfigError as error:
            if first:
                raise  # unreachable at start: bad configuration, one line, exit non-zero
            raise OSError(str(error)) from error
        await prepare_connection(conn)
        return conn

    async def _become_writer(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        announced = False
        while not await try_writer_lock(conn, self.chain_id):
            if not announced:
                holder = await writer_lock_holder(conn, self.chain_id)
                log.info("standby: another indexer holds this chain's writer lock; taking over "
                         "when it is released", chain_id=self.chain_id, holder_pid=holder)
                announced = True
            await sleep_or_stop(STANDBY_RETRY_SECONDS, stop)
        log.info("active: holding the writer lock", chain_id=self.chain_id)
        self._endpoints_due = True  # saved once the first range's fetch is under way

    # ---------------------------------------------------------------------------- the loop

    async def _ingest(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        self.checkpoint = await load_checkpoint(conn, self.chain_id)
        while not stop.is_set():
            head, target = await until_stopped(retry_rpc(
                "eth_blockNumber", lambda: ingest_target(self.source, self.settings.confirmations),
                chain_id=self.chain_id, metrics=self.metrics), stop)
            if target < 0:  # CONFIRMATIONS=finalized on a chain with nothing final yet
                await self._save_endpoints(conn)
                self.metrics.observe_progress(head=head)
                await sleep_or_stop(self.settings.poll_interval, stop)
                continue
            if self.checkpoint is None:
                self.checkpoint = await self._initial_checkpoint(target, stop)
            self.metrics.observe_progress(head=head, target=target, checkpoint=self.checkpoint.number)
            if self.checkpoint.number < target:
                await self._catch_up(conn, target, stop)  # saves the endpoints' state too
                continue
            await self._save_endpoints(conn)
            if not await self._check_window(conn, stop):
                await sleep_or_stop(self.settings.poll_interval, stop)

    async def _initial_checkpoint(self, target: int, stop: asyncio.Event) -> Checkpoint:
        """Where a chain without a checkpoint starts: just below ``START_BLOCK`` (default: the
        target). Not written until the first range is stored with it."""
        start = self.settings.start_block if self.settings.start_block is not None else max(target, 0)
        if start == 0:
            return Checkpoint(-1, ZERO_HASH)
        [parent] = await until_stopped(retry_rpc(
            "eth_getBlockByNumber", lambda: self.source.headers([start - 1]),
            chain_id=self.chain_id, metrics=self.metrics), stop)
        if parent is None:
            raise ConfigError(f"START_BLOCK={start} is above the node's head")
        log.info("starting", chain_id=self.chain_id, start_block=start)
        return Checkpoint(parent.number, parent.hash)

    async def _catch_up(self, conn: asyncpg.Connection, target: int, stop: asyncio.Event) -> None:
        """Ingest ranges up to ``target``, fetching the next range while writing the current."""
        assert self._fetcher is not None and self.checkpoint is not None
        if self._watch is not None:
            await self._watch.refresh(conn)
        pending: asyncio.Future[Batch] | None = asyncio.ensure_future(
            self._fetch(self.checkpoint.number + 1, target))
        try:
            await self._save_endpoints(conn)  # while the first range is fetched
            while pending is not None:
                batch = await until_stopped(pending, stop)
                pending = None
                if batch.last < target:
                    pending = asyncio.ensure_future(self._fetch(batch.last + 1, target))
                if batch.headers[0].parent_hash != self.checkpoint.hash:
                    log.info("range does not chain to the checkpoint; checking for a reorg",
                             chain_id=self.chain_id, checkpoint=self.checkpoint.number,
                             first=batch.first)
                    if not await self._check_window(conn, stop):
                        # The stored window agrees with the node: the node moved between our
                        # requests (or a load-balanced backend lags). Refetch after a pause.
                        if await load_checkpoint(conn, self.chain_id) is None:
                            self.checkpoint = None  # the start block itself moved: derive again
                        await sleep_or_stop(self.settings.poll_interval, stop)
                    return
                await self._write(conn, batch, target)
                if stop.is_set():
                    return
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    async def _fetch(self, first: int, target: int) -> Batch:
        assert self._fetcher is not None
        if self._watch is None:
            return await self._fetcher.fetch(first, target)
        return await fetch_with_children(self._fetcher, self._watch, first, target)

    async def _write(self, conn: asyncpg.Connection, batch: Batch, target: int) -> None:
        started = time.perf_counter()
        async with conn.transaction():
            inserted = await store_range(conn, chain_id=self.chain_id, headers=batch.headers,
                                         logs=batch.logs, keep_blocks=self.keep_blocks)
        seconds = time.perf_counter() - started
        self.checkpoint = Checkpoint(batch.last, batch.headers[-1].hash)
        self.metrics.logs.inc(inserted)
        self.metrics.batch_duration_seconds.observe(seconds)
        self.metrics.observe_progress(target=target, checkpoint=batch.last)
        log.info("ingested", chain_id=self.chain_id, first=batch.first, last=batch.last,
                 logs=len(batch.logs), inserted=inserted, seconds=round(seconds, 4),
                 lag=target - batch.last, range_blocks=self.sizer.size)
        await self._save_endpoints(conn)

    async def _save_endpoints(self, conn: asyncpg.Connection) -> None:
        """Every ``ENDPOINT_STATE_SECONDS``, outside any range transaction: the endpoints'
        state for ``status.py`` (only with an ``EndpointPool``; only by the active indexer), and
        once as soon as it becomes the active one."""
        if not isinstance(self.source, EndpointPool):
            return
        now = time.monotonic()
        if not self._endpoints_due and now - self._endpoints_saved_at < ENDPOINT_STATE_SECONDS:
            return
        self._endpoints_saved_at = now
        self._endpoints_due = False
        await save_endpoint_statuses(conn, self.chain_id, self.source.statuses())

    async def _check_window(self, conn: asyncpg.Connection, stop: asyncio.Event) -> bool:
        """Re-check the stored window against the node; handle a reorg if there is one.
        Returns whether a reorg was handled (the checkpoint moved back).

        A reorg (or a too-deep one) is acted on only when a second read, straight after the
        first, describes the same alternative chain: a node that served another chain once is
        not enough to invalidate anything."""
        assert self.checkpoint is not None
        checkpoint = self.checkpoint
        stored = await recent_blocks(conn, self.chain_id,
                                     since=checkpoint.number - self.settings.reorg_window + 1)
        if not stored:
            return False
        first = await self._read_window(checkpoint, stored, stop)
        if first is None:
            return False
        if isinstance(first, Unconfirmed):
            self._unconfirmed(first)
            return False
        second = await self._read_window(checkpoint, stored, stop)
        if isinstance(first, ReorgTooDeep) and isinstance(second, ReorgTooDeep):
            raise second
        if not (isinstance(first, Reorg) and isinstance(second, Reorg) and same_reorg(first, second)):
            self._unconfirmed(Unconfirmed(checkpoint.number, "a second read did not serve the "
                                          "same alternative chain"))
            return False
        reorg = second
        async with conn.transaction():
            invalidated = await apply_reorg(conn, reorg)
        self.checkpoint = Checkpoint(reorg.ancestor.number, reorg.ancestor.hash)
        self.metrics.reorgs.inc()
        self.metrics.reorg_depth_blocks.observe(reorg.depth)
        self.metrics.observe_progress(checkpoint=reorg.ancestor.number)
        log.warning("reorg", chain_id=self.chain_id, depth=reorg.depth,
                    common_ancestor=reorg.ancestor.number, old_head_hash=reorg.old_head.hash,
                    new_head_hash=reorg.new_head_hash, events_invalidated=invalidated)
        return True

    async def _read_window(self, checkpoint: Checkpoint, stored: list[StoredBlock],
                           stop: asyncio.Event) -> Reorg | Unconfirmed | ReorgTooDeep | None:
        """One read of the node's headers at the stored heights, judged by ``detect``."""
        numbers = [block.number for block in stored]
        headers = await until_stopped(retry_rpc(
            "eth_getBlockByNumber", lambda: self.source.headers(numbers), chain_id=self.chain_id,
            metrics=self.metrics), stop)
        try:
            return detect(self.chain_id, checkpoint, stored, dict(zip(numbers, headers, strict=True)),
                          window=self.settings.reorg_window)
        except ReorgTooDeep as too_deep:
            return too_deep

    def _unconfirmed(self, verdict: Unconfirmed) -> None:
        self.metrics.unconfirmed_mismatches.inc()
        log.info("block hash mismatch not confirmed as a reorg; looking again next poll",
                 chain_id=self.chain_id, height=verdict.height, reason=verdict.reason)


def _is_connection_error(error: asyncpg.PostgresError) -> bool:
    # Class 08 (connection exception), 57P01-57P03 (admin shutdown, crash, cannot connect now).
    code = getattr(error, "sqlstate", "") or ""
    return code.startswith("08") or code in {"57P01", "57P02", "57P03"}


async def _discard_connection(opening: asyncio.Future[asyncpg.Connection]) -> None:
    """Cancel a connection still being opened, or close it if it was opened."""
    opening.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await opening
    if opening.done() and not opening.cancelled() and opening.exception() is None:
        await _close_quietly(opening.result())


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        conn.terminate()

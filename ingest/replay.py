"""The library half of ``scripts/replay.py``: re-ingest ``[from_block, to_block]`` from the chain.

Same code path as the indexer: ranges come from :class:`ingest.fetch.RangeFetcher` (adaptive
ranges, retries with backoff, ``Retry-After``, by-hash fallback, every log checked against its
header's hash) and are written with :mod:`ingest.store` (COPY to staging, ``INSERT … ON CONFLICT
DO NOTHING``). Per range, in one transaction:

- stored events of blocks whose hash differs from the canonical block at that height are treated
  as a reorg: invalidated (``invalidated = true, invalidated_at = now()``) and recorded in a
  ``reorgs`` row (which NOTIFYs the processor, so sent webhooks get their ``event.removed``);
- canonical logs not stored yet are inserted (already-stored ones change nothing and fire
  nothing: the statement-level trigger only sees inserted rows);
- the checkpoint never moves backwards. It moves forward to the range's end only when the range
  contains the checkpoint block, or starts right above it with a matching ``parentHash``
  (contiguous); a checkpoint whose block turned out non-canonical is replaced by the canonical
  block of the range's end. Without a checkpoint none is created (the indexer decides where it
  starts). ``blocks`` rows are written only where the indexer keeps them (its window).

**Alongside a live indexer (no stop, no gap).** The range is split at the *settled bound*
(:func:`settled_through`): the last block no indexer of the chain writes again — at or below both
its checkpoint minus ``REORG_WINDOW`` and the lowest block it still keeps in ``blocks`` (a
rollback's common ancestor is always a kept block, and only events above it are invalidated), or
at or below the node's ``finalized`` block when that is not above the checkpoint.

- ``[from_block, settled]`` is replayed *concurrently*, without the writer lock: only events are
  written (missing logs inserted, divergent blocks invalidated with a ``reorgs`` row); the
  checkpoint and ``blocks`` are the indexer's and are not touched. The indexer inserts only
  above its checkpoint and invalidates only above a kept block, so the two never write the same
  rows; concurrent inserts of one log are absorbed by the unique key either way.
- ``(settled, to_block]`` (the live window, and anything above the checkpoint) belongs to the
  indexer. Replay tries the writer lock *without waiting*: if an indexer holds it, that part is
  left to it (``ReplayResult.left_to_indexer``): it ingests above its checkpoint itself and
  re-checks its window every poll, so nothing there needs a second writer, and a second writer
  there could store logs of a block the indexer has just rolled back. If no indexer runs, replay
  holds the lock for that part only and writes it like the indexer would (the checkpoint rules
  above); an indexer started meanwhile waits as standby until that part is done.
- Without a checkpoint there is no settled bound: replay takes the lock for the whole range, or,
  while an indexer holds it (it is storing its first range), waits for the first checkpoint and
  reports each re-check through ``on_wait``.

A dry run takes no lock, writes nothing, and plans the same split.

**Factory children.** With ``INGEST_ADDRESSES``, ranges are fetched like the indexer's
(``ingest.factories``): the registered factories and their children are asked for, and a child
created in a range is fetched in that range. Children found by the replay (their creation was
never ingested: a factory registered after the indexer passed it) are then backfilled: their
logs from the replay's end up to the checkpoint are replayed for them alone, with the same split
(settled blocks concurrently; the live window only when no indexer runs, else a warning says
which blocks to replay again once they have settled).

**Resuming.** Each range commits on its own and everything is idempotent, so after Ctrl-C
(``stop`` set: the current range commits, then :func:`replay` returns) running the same command
again is correct; ``ReplayResult.last_block`` tells where to resume from to skip work.

**block_time bounds.** The divergence query is bounded by the canonical range's timestamps
widened by :data:`FORK_TIME_SLACK`: a block of a fork at height ``n`` carries a timestamp close to
the canonical block at ``n`` (both descend from a common ancestor and advance by the chain's
block time), far inside a day, so no stored event of the range is hidden while TimescaleDB
skips the chunks outside it. The count of logs already stored (dry run) uses the exact canonical
timestamps: a canonical log, if stored, carries its canonical block's time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import structlog

from core.db import connect
from core.errors import ChainMismatch, RpcBadResponse, RpcUnavailable
from core.redact import redact_url
from core.settings import IngestSettings
from ingest.factories import ChildWatch, fetch_with_children
from ingest.fetch import Batch, RangeFetcher, retry_rpc
from ingest.finality import ingest_target
from ingest.metrics import IngestMetrics
from ingest.poller import BLOCKS_MARGIN
from ingest.ranges import RangeSizer
from ingest.rpc import ChainSource
from ingest.store import (
    Checkpoint,
    block_time,
    insert_events,
    load_checkpoint,
    prepare_connection,
    save_checkpoint,
    try_writer_lock,
    upsert_blocks,
    writer_lock_holder,
)

log = structlog.get_logger(__name__)

FORK_TIME_SLACK = timedelta(days=1)
LOCK_RETRY_SECONDS = 1.0

# $1 chain, $2..$3 block numbers, $4..$5 block_time bound (canonical range ± FORK_TIME_SLACK).
STORED_BLOCK_HASHES = """
SELECT DISTINCT block_number, block_hash FROM events
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3
  AND block_time BETWEEN $4 AND $5 AND NOT invalidated"""

ProgressCallback = Callable[[int, int], None]
"""``progress(blocks_done, blocks_total)`` after each range."""

WaitCallback = Callable[[int | None], None]
"""``on_wait(holder_pid)`` while an indexer holds the writer lock and has no checkpoint yet."""


@dataclass
class ReplayResult:
    """What a replay changed (or, with ``dry_run``, would change)."""

    chain_id: int
    from_block: int
    to_block: int
    dry_run: bool
    blocks: int = 0
    logs_added: int = 0
    events_invalidated: int = 0
    divergent_blocks: list[int] = field(default_factory=list)
    checkpoint: int | None = None
    last_block: int | None = None  # the last block fully replayed (resume from last_block + 1)
    interrupted: bool = False
    # The last block replayed alongside the live indexer (no lock), if any.
    settled_through: int | None = None
    # The first block left to the live indexer (its window or above its checkpoint), if any.
    left_to_indexer: int | None = None


async def replay(settings: IngestSettings, source: ChainSource, *, from_block: int,
                 to_block: int | None = None, dry_run: bool = False,
                 progress: ProgressCallback | None = None, on_wait: WaitCallback | None = None,
                 stop: asyncio.Event | None = None) -> ReplayResult:
    """Re-ingest ``[from_block, to_block]`` (default: up to head − ``CONFIRMATIONS``, or the
    node's ``finalized``/``safe`` block).

    Raises ``ChainMismatch`` when ``CHAIN_ID`` disagrees with the node, ``ConfigError`` when the
    database is unreachable, ``ValueError`` for an empty range. RPC faults are retried."""
    stop = stop or asyncio.Event()
    chain_id = await retry_rpc("eth_chainId", source.chain_id)
    if settings.chain_id is not None and settings.chain_id != chain_id:
        raise ChainMismatch(f"CHAIN_ID={settings.chain_id} but the node at "
                            f"{redact_url(settings.rpc_url)} reports chain {chain_id}")
    if to_block is None:
        _, target = await retry_rpc(
            "eth_blockNumber", lambda: ingest_target(source, settings.confirmations))
        to_block = target
    if from_block < 0 or to_block < from_block:
        raise ValueError(f"empty block range {from_block}..{to_block}")
    result = ReplayResult(chain_id, from_block, to_block, dry_run)
    conn = await connect(settings.database_url)
    try:
        await prepare_connection(conn)
        watch = None
        if settings.address_filter:
            watch = ChildWatch(chain_id, settings.address_filter)
            await watch.refresh(conn)
        known = set(watch.children) if watch is not None else set()
        await _replay_split(conn, settings, source, result, progress, on_wait, stop, watch)
        if watch is not None and not dry_run and not result.interrupted:
            found = sorted(set(watch.children) - known)
            await _backfill_children(conn, settings, source, result, found, stop)
    finally:
        await conn.close()  # also releases the writer lock, if taken
    log.info("replayed", chain_id=chain_id, from_block=from_block, to_block=to_block,
             dry_run=dry_run, logs_added=result.logs_added,
             events_invalidated=result.events_invalidated, interrupted=result.interrupted,
             last_block=result.last_block, settled_through=result.settled_through,
             left_to_indexer=result.left_to_indexer)
    return result


async def settled_through(conn: asyncpg.Connection, source: ChainSource, *, chain_id: int,
                          checkpoint: Checkpoint, reorg_window: int) -> int:
    """The last block that no indexer of the chain writes again (see the module doc): the
    highest of ``min(checkpoint − reorg_window, lowest kept block)`` and the node's ``finalized``
    block capped at the checkpoint. A node without the tag (or failing to answer) only makes the
    bound lower."""
    settled = checkpoint.number - reorg_window
    lowest_kept = await conn.fetchval("SELECT min(number) FROM blocks WHERE chain_id = $1",
                                      chain_id)
    if lowest_kept is not None:
        settled = min(settled, lowest_kept)
    try:
        finalized = await source.tagged_header("finalized")
    except (RpcUnavailable, RpcBadResponse) as error:
        log.info("no finalized block from the node; settled bound from the window only",
                 chain_id=chain_id, reason=str(error))
        finalized = None
    if finalized is not None:
        settled = max(settled, min(finalized.number, checkpoint.number))
    return settled


async def _replay_split(conn: asyncpg.Connection, settings: IngestSettings, source: ChainSource,
                        result: ReplayResult, progress: ProgressCallback | None,
                        on_wait: WaitCallback | None, stop: asyncio.Event,
                        watch: ChildWatch | None = None) -> None:
    """Replay the settled part alongside the indexer, then the rest under the writer lock or
    not at all (see the module doc)."""
    chain_id = result.chain_id
    checkpoint = await load_checkpoint(conn, chain_id)
    while checkpoint is None:
        if result.dry_run or await try_writer_lock(conn, chain_id):
            # No indexer has stored anything: nothing is settled, the whole range is written
            # like the indexer would (under the lock; a dry run only plans it).
            await _replay_ranges(conn, settings, source, result, progress, stop,
                                 first=result.from_block, last=result.to_block, concurrent=False,
                                 watch=watch)
            return
        holder = await writer_lock_holder(conn, chain_id)
        log.info("waiting for the live indexer's first checkpoint", chain_id=chain_id,
                 holder_pid=holder)
        if on_wait is not None:
            on_wait(holder)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOCK_RETRY_SECONDS)
        if stop.is_set():
            result.interrupted = True
            return
        checkpoint = await load_checkpoint(conn, chain_id)
    await _replay_settled_then_unlocked(conn, settings, source, result, progress, stop, watch,
                                        checkpoint)
    if result.left_to_indexer is not None:
        log.info("left to the live indexer: its reorg window and above its checkpoint",
                 chain_id=chain_id, first=result.left_to_indexer, last=result.to_block,
                 settled_through=result.settled_through)


async def _replay_settled_then_unlocked(conn: asyncpg.Connection, settings: IngestSettings,
                                        source: ChainSource, result: ReplayResult,
                                        progress: ProgressCallback | None, stop: asyncio.Event,
                                        watch: ChildWatch | None,
                                        checkpoint: Checkpoint) -> None:
    """The split of the module doc once a checkpoint exists: ``[from, settled]`` concurrently
    (events only), the rest under the writer lock if no indexer holds it, else its first block
    goes to ``result.left_to_indexer``."""
    chain_id = result.chain_id
    settled = await settled_through(conn, source, chain_id=chain_id, checkpoint=checkpoint,
                                    reorg_window=settings.reorg_window)
    concurrent_last = min(result.to_block, settled)
    if result.from_block <= concurrent_last:
        await _replay_ranges(conn, settings, source, result, progress, stop,
                             first=result.from_block, last=concurrent_last, concurrent=True,
                             watch=watch)
        result.settled_through = concurrent_last
        if result.interrupted:
            return
    rest = max(result.from_block, concurrent_last + 1)
    if rest > result.to_block:
        return
    live = (await writer_lock_holder(conn, chain_id) is not None if result.dry_run
            else not await try_writer_lock(conn, chain_id))
    if live:
        result.left_to_indexer = rest
        return
    await _replay_ranges(conn, settings, source, result, progress, stop, first=rest,
                         last=result.to_block, concurrent=False, watch=watch)


async def _backfill_children(conn: asyncpg.Connection, settings: IngestSettings,
                             source: ChainSource, result: ReplayResult, children: list[str],
                             stop: asyncio.Event) -> None:
    """Children a filtered replay found (their creation was not ingested before) have logs
    between the replay's end and the checkpoint that the indexer did not ask for: replay that
    span for them alone — settled blocks concurrently, the live window only under the writer
    lock (held already, or free because no indexer runs)."""
    chain_id = result.chain_id
    checkpoint = await load_checkpoint(conn, chain_id)
    if not children or checkpoint is None or checkpoint.number <= result.to_block:
        return
    watch = ChildWatch(chain_id, children)
    backfill = ReplayResult(chain_id, result.to_block + 1, checkpoint.number, False)
    log.info("backfilling children found by the replay", chain_id=chain_id,
             children=len(children), from_block=backfill.from_block, to_block=backfill.to_block)
    await _replay_settled_then_unlocked(conn, settings, source, backfill, None, stop, watch,
                                        checkpoint)
    if backfill.left_to_indexer is not None:
        log.warning("children's logs in the live indexer's window were not backfilled: "
                    "replay these blocks again once they have settled", chain_id=chain_id,
                    first=backfill.left_to_indexer, last=backfill.to_block,
                    children=len(children))
    result.logs_added += backfill.logs_added
    result.events_invalidated += backfill.events_invalidated
    result.divergent_blocks += backfill.divergent_blocks
    result.interrupted = backfill.interrupted


async def _replay_ranges(conn: asyncpg.Connection, settings: IngestSettings, source: ChainSource,
                         result: ReplayResult, progress: ProgressCallback | None,
                         stop: asyncio.Event, *, first: int, last: int, concurrent: bool,
                         watch: ChildWatch | None = None) -> None:
    """Replay ``[first, last]`` range by range (one transaction each); ``concurrent``: events
    only, never the checkpoint or ``blocks`` (a live indexer owns those)."""
    # Replay starts at MAX_BLOCK_RANGE (the range the operator asked for is usually stored in
    # one transaction); RPC_MAX_RESPONSE_MB still halves a range too dense to read.
    sizer = RangeSizer(settings.max_block_range, initial=settings.max_block_range)
    fetcher = RangeFetcher(source, sizer,
                           addresses=settings.address_filter, metrics=IngestMetrics(registry=None),
                           chain_id=result.chain_id)

    def fetch(start: int) -> Awaitable[Batch]:
        if watch is None:
            return fetcher.fetch(start, last)
        return fetch_with_children(fetcher, watch, start, last)

    keep_blocks = settings.reorg_window + BLOCKS_MARGIN
    total = result.to_block - result.from_block + 1
    previous: Batch | None = None
    # The next range is fetched while the current one is written, as the indexer does: the
    # node's round trip and the parsing overlap the database's (half the wall time otherwise).
    pending: asyncio.Future[Batch] | None = None
    try:
        while first <= last:
            if stop.is_set():
                result.interrupted = True
                return
            batch = await (pending if pending is not None else fetch(first))
            pending = None
            if previous is not None and batch.headers[0].parent_hash != previous.headers[-1].hash:
                # The node moved between two ranges: replay the previous one again; its
                # divergence check invalidates whatever we stored from the abandoned branch.
                log.info("node moved during replay; replaying the previous range again",
                         chain_id=result.chain_id, first=previous.first)
                first, previous = previous.first, None
                continue
            if batch.last < last:
                pending = asyncio.ensure_future(fetch(batch.last + 1))
            if result.dry_run:
                await _plan_range(conn, result, batch)
            else:
                async with conn.transaction():
                    await _write_range(conn, result, batch, keep_blocks, concurrent=concurrent)
            result.blocks = batch.last - result.from_block + 1
            result.last_block = batch.last
            if progress is not None:
                progress(result.blocks, total)
            previous, first = batch, batch.last + 1
    finally:
        if pending is not None:  # stopped or failed while the next range was in flight
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending


async def _divergent(conn: asyncpg.Connection, chain_id: int, batch: Batch) -> dict[int, list[str]]:
    """Stored valid events' block hashes that are not the canonical hash at their height."""
    canonical = {h.number: h.hash for h in batch.headers}
    rows = await conn.fetch(
        STORED_BLOCK_HASHES, chain_id, batch.first, batch.last, block_time(batch.headers[0]) - FORK_TIME_SLACK,
        block_time(batch.headers[-1]) + FORK_TIME_SLACK)
    divergent: dict[int, list[str]] = {}
    for row in rows:
        if canonical[row["block_number"]] != row["block_hash"]:
            divergent.setdefault(row["block_number"], []).append(row["block_hash"])
    return divergent


async def _plan_range(conn: asyncpg.Connection, result: ReplayResult, batch: Batch) -> None:
    divergent = await _divergent(conn, result.chain_id, batch)
    if divergent:
        pairs = [(n, h) for n, hashes in divergent.items() for h in hashes]
        result.events_invalidated += await conn.fetchval(
            """SELECT count(*) FROM events WHERE chain_id = $1
                 AND (block_number, block_hash) IN (SELECT * FROM unnest($2::bigint[], $3::text[]))
                 AND block_time BETWEEN $4 AND $5 AND NOT invalidated""",
            result.chain_id, [p[0] for p in pairs], [p[1] for p in pairs],
            block_time(batch.headers[0]) - FORK_TIME_SLACK,
            block_time(batch.headers[-1]) + FORK_TIME_SLACK)
        result.divergent_blocks.extend(sorted(divergent))
    stored = await conn.fetch(
        """SELECT block_hash, log_index FROM events WHERE chain_id = $1
             AND block_number BETWEEN $2 AND $3 AND block_time BETWEEN $4 AND $5""",
        result.chain_id, batch.first, batch.last, block_time(batch.headers[0]),
        block_time(batch.headers[-1]))
    have = {(r["block_hash"], r["log_index"]) for r in stored}
    result.logs_added += sum((entry.block_hash, entry.log_index) not in have for entry in batch.logs)


async def _write_range(conn: asyncpg.Connection, result: ReplayResult, batch: Batch,
                       keep_blocks: int, *, concurrent: bool) -> None:
    chain_id = result.chain_id
    divergent = await _divergent(conn, chain_id, batch)
    if divergent:
        pairs = [(n, h) for n, hashes in divergent.items() for h in hashes]
        status = await conn.execute(
            """UPDATE events SET invalidated = true, invalidated_at = now() WHERE chain_id = $1
                 AND (block_number, block_hash) IN (SELECT * FROM unnest($2::bigint[], $3::text[]))
                 AND block_time BETWEEN $4 AND $5 AND NOT invalidated""",
            chain_id, [p[0] for p in pairs], [p[1] for p in pairs],
            block_time(batch.headers[0]) - FORK_TIME_SLACK,
            block_time(batch.headers[-1]) + FORK_TIME_SLACK)
        invalidated = int(status.rsplit(" ", 1)[1])
        lowest, highest = min(divergent), max(divergent)
        canonical = {h.number: h.hash for h in batch.headers}
        await conn.execute(
            """INSERT INTO reorgs (chain_id, depth, common_ancestor, old_head_hash, new_head_hash,
                                   events_invalidated) VALUES ($1, $2, $3, $4, $5, $6)""",
            chain_id, highest - lowest + 1, lowest - 1, divergent[highest][0], canonical[highest],
            invalidated)
        result.events_invalidated += invalidated
        result.divergent_blocks.extend(sorted(divergent))
        log.warning("replay found divergent blocks", chain_id=chain_id, blocks=sorted(divergent),
                    events_invalidated=invalidated)
    result.logs_added += await insert_events(conn, chain_id=chain_id, headers=batch.headers,
                                             logs=batch.logs)
    if concurrent:
        return  # the checkpoint and blocks rows are the live indexer's

    checkpoint = await load_checkpoint(conn, chain_id)
    if checkpoint is None:
        return
    contiguous = batch.first <= checkpoint.number <= batch.last or (
        batch.first == checkpoint.number + 1 and batch.headers[0].parent_hash == checkpoint.hash)
    if contiguous:
        checkpoint = Checkpoint(batch.last, batch.headers[-1].hash)
        await save_checkpoint(conn, chain_id, checkpoint)
        result.checkpoint = checkpoint.number
    # Only where the indexer keeps blocks rows (its re-checked window and margin).
    await upsert_blocks(conn, chain_id, [h for h in batch.headers
                                         if checkpoint.number - keep_blocks < h.number <= checkpoint.number])

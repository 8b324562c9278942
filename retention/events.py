"""Pruning ``events``: batched DELETEs on plain Postgres, whole-chunk drops on TimescaleDB.

**Plain Postgres.** Per chain, walking the ``(chain_id, block_number)`` index upward from the
chain's oldest event: one statement deletes at most ``batch_rows`` events older than the cutoff,
in its own short transaction (row locks only, on rows nobody else writes). Every statement
re-evaluates the guards of :mod:`retention.guards` itself — reorg window and uncorrected reorgs
from ``checkpoints``/``reorgs``, unprocessed batches, deferred matches and undelivered deliveries
— so the check and the delete see one snapshot: a row committed after it is invisible to the
delete, and a row committed before it is seen together with whatever protects it.

**TimescaleDB.** ``drop_chunks`` removes chunks whose whole time range is older than the
effective horizon: the cutoff, held back by the oldest protected event (:func:`guards.floor`).
Chunks hold every chain, so one protected event keeps its chunk and every newer one. Between
computing that horizon and dropping, a writer could commit old rows (a replay of an old range)
into a chunk about to go; so the horizon is computed, and the chunks dropped, while holding
``EXCLUSIVE`` on the hypertable root (it excludes writers — every INSERT/UPDATE locks the root
``ROW EXCLUSIVE`` — and admits readers). The lock is only taken when a chunk is due, is held
for milliseconds, and is given up after ``lock_timeout`` (the next pass retries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from retention.guards import Pin, chain_guards, floor, pins

# Loose index scan: the chains present in events, one index probe each (no DISTINCT scan).
_CHAINS = """
WITH RECURSIVE chains AS (
    (SELECT chain_id FROM events ORDER BY chain_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.chain_id FROM events e WHERE e.chain_id > c.chain_id
            ORDER BY e.chain_id LIMIT 1)
    FROM chains c WHERE c.chain_id IS NOT NULL
)
SELECT chain_id FROM chains WHERE chain_id IS NOT NULL
"""
_FIRST_BLOCK = "SELECT min(block_number) FROM events WHERE chain_id = $1"
_LAST_BLOCK = "SELECT max(block_number) FROM events WHERE chain_id = $1"
_TIME_AT = """
SELECT block_time FROM events WHERE chain_id = $1 AND block_number >= $2
ORDER BY block_number LIMIT 1
"""

# $1 chain, $2 first block to look at, $3 first block not to look at (a scan bound only: the
# age test is the block_time condition), $4 reorg window, $5 cutoff, $6 rows (NULL: all).
# The guards are evaluated in the statement that deletes (one snapshot): see the docstring.
# ``candidates`` is materialised on its own so that it stays an index scan in block order that
# stops after $6 rows (with the anti-joins inside, the planner scans and sorts the whole range).
_CANDIDATES = """
WITH guard AS (
    SELECT coalesce(least(
               (SELECT c.block_number - $4 FROM checkpoints c WHERE c.chain_id = $1),
               (SELECT min(r.common_ancestor) FROM reorgs r
                WHERE r.chain_id = $1 AND r.corrected_at IS NULL)),
               9223372036854775807) AS last_block,
           least($5::timestamptz,
                 (SELECT min(b.min_block_time) FROM event_batches b
                  WHERE b.chain_id = $1 AND b.processed_at IS NULL)) AS before_time
), candidates AS MATERIALIZED (
    SELECT e.ctid, e.id, e.block_number
    FROM events e, guard g
    WHERE e.chain_id = $1 AND e.block_number >= $2 AND e.block_number < $3
      AND e.block_number <= g.last_block
      AND e.block_time < g.before_time
    ORDER BY e.block_number
    LIMIT $6
)"""
_UNPINNED = """
    NOT EXISTS (SELECT 1 FROM deferred_matches m WHERE m.event_id = c.id)
    AND NOT EXISTS (SELECT 1 FROM deliveries d
                    WHERE d.event_id = c.id AND d.status IN ('pending', 'queued'))"""
# Returns how many rows were deleted, how many candidates were looked at, and the last block
# among them (where the next statement starts).
_DELETE_BATCH = _CANDIDATES + f""", deleted AS (
    DELETE FROM events
    WHERE chain_id = $1 AND ctid = ANY(ARRAY(SELECT c.ctid FROM candidates c WHERE {_UNPINNED}))
    RETURNING 1
)
SELECT (SELECT count(*) FROM deleted) AS deleted, count(*) AS scanned,
       max(block_number) AS last_block
FROM candidates
"""
_COUNT_DOOMED = _CANDIDATES + f" SELECT count(*) FROM candidates c WHERE {_UNPINNED}"

_CHUNKS_BEFORE = """
SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk, range_start, range_end,
       is_compressed
FROM timescaledb_information.chunks
WHERE hypertable_schema = current_schema() AND hypertable_name = 'events' AND range_end <= $1
ORDER BY range_start
"""
_CHUNK_ROWS = "SELECT count(*) FROM events WHERE block_time >= $1 AND block_time < $2"
_CHUNK_BYTES = """SELECT total_bytes FROM chunks_detailed_size('events')
                  WHERE format('%I.%I', chunk_schema, chunk_name) = $1"""
# drop_chunks needs the table's owner: the migration's definer function (0005) lets the
# processor's role call it on events only.
_DROP = "SELECT blockhook_drop_event_chunks($1::timestamptz)"

LOCK_TIMEOUT_MS = 2000


@dataclass
class EventsPruned:
    """What one call removed; ``done`` is False when it stopped at its time budget."""

    rows: int = 0
    chunks: list[str] = field(default_factory=list)
    bytes: int = 0
    done: bool = True
    held_back_by: Pin | None = None
    deferred: str | None = None  # why a due chunk drop was put off (lock not granted)


class Budget:
    """A deadline for one slice of work; ``None`` seconds = no deadline."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def exhausted(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


async def _scan_end(conn: asyncpg.Connection, chain_id: int, first: int,
                    cutoff: datetime) -> int:
    """The first block number at or after which events are not older than ``cutoff``: a binary
    search on the index, relying on block times not decreasing along a chain. It only bounds the
    scan; where a chain's times do decrease, older events above it wait for a later pass."""
    last = await conn.fetchval(_LAST_BLOCK, chain_id)
    low, high = first, last + 1  # invariant: the answer is in [low, high]
    while low < high:
        middle = (low + high) // 2
        found = await conn.fetchval(_TIME_AT, chain_id, middle)
        if found is None or found >= cutoff:
            high = middle
        else:
            low = middle + 1
    return int(low)


async def chains_in_events(conn: asyncpg.Connection) -> list[int]:
    """The chain ids present in ``events`` (a loose index scan: one probe per chain)."""
    return [row["chain_id"] for row in await conn.fetch(_CHAINS)]


async def _chain_ranges(conn: asyncpg.Connection,
                        cutoff: datetime) -> list[tuple[int, int, int]]:
    """Per chain in ``events``: (chain, its oldest block, the scan end for ``cutoff``)."""
    ranges = []
    for chain_id in await chains_in_events(conn):
        first = await conn.fetchval(_FIRST_BLOCK, chain_id)
        if first is not None:
            ranges.append((chain_id, first, await _scan_end(conn, chain_id, first, cutoff)))
    return ranges


async def prune_plain(conn: asyncpg.Connection, *, cutoff: datetime, reorg_window: int,
                      batch_rows: int, budget: Budget) -> EventsPruned:
    """Delete unprotected events older than ``cutoff``, looking at ``batch_rows`` per
    autocommitted statement, until none is left or ``budget`` runs out (``done`` False: call
    again)."""
    result = EventsPruned()
    for chain_id, first, end in await _chain_ranges(conn, cutoff):
        while first < end:
            batch = await conn.fetchrow(_DELETE_BATCH, chain_id, first, end, reorg_window,
                                        cutoff, batch_rows)
            result.rows += batch["deleted"]
            if batch["scanned"] < batch_rows:
                break  # the range is exhausted
            if budget.exhausted():  # after a statement: every slice makes progress
                result.done = False
                return result
            # The batch may have ended inside a block: start there again, unless nothing moved
            # (a block with more protected rows than one batch: skip it for this pass).
            stuck = batch["deleted"] == 0 and batch["last_block"] == first
            first = batch["last_block"] + 1 if stuck else batch["last_block"]
    return result


async def count_plain(conn: asyncpg.Connection, *, cutoff: datetime, reorg_window: int) -> int:
    """How many events :func:`prune_plain` would delete now (the same predicate, counted)."""
    return sum([await conn.fetchval(_COUNT_DOOMED, chain_id, first, end, reorg_window, cutoff, None)
                for chain_id, first, end in await _chain_ranges(conn, cutoff)])


async def due_chunks(conn: asyncpg.Connection, before: datetime) -> list[asyncpg.Record]:
    """Chunks of ``events`` whose whole time range is older than ``before``, oldest first."""
    return list(await conn.fetch(_CHUNKS_BEFORE, before))


async def chunk_size(conn: asyncpg.Connection, chunk: asyncpg.Record) -> tuple[int, int]:
    """(rows, bytes) of a chunk from :func:`due_chunks`: rows counted through the hypertable
    (compressed ones included), bytes with indexes and TOAST."""
    rows = await conn.fetchval(_CHUNK_ROWS, chunk["range_start"], chunk["range_end"])
    return int(rows), int(await conn.fetchval(_CHUNK_BYTES, chunk["chunk"]) or 0)


async def drop_chunks(conn: asyncpg.Connection, *, cutoff: datetime, reorg_window: int,
                      lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> EventsPruned:
    """Drop the chunks entirely older than the effective horizon (see the module docstring).
    If the lock is not granted within ``lock_timeout_ms``, nothing is dropped and ``deferred``
    says why."""
    result = EventsPruned()
    candidates = await due_chunks(conn, cutoff)
    if not candidates:
        return result
    # Counted before taking the lock (a scan of cold chunks must not hold writers back).
    sizes = {c["chunk"]: await chunk_size(conn, c) for c in candidates}
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            await conn.execute("LOCK TABLE ONLY events IN EXCLUSIVE MODE")
            found = await pins(conn, await chain_guards(conn, reorg_window=reorg_window))
            horizon, result.held_back_by = floor(cutoff, found)
            dropped = [str(name) for name in await conn.fetchval(
                f"SELECT array_agg(c) FROM ({_DROP}) AS d(c)", horizon) or []]
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as error:
        # A reader of an old chunk that then writes (a replay) can deadlock with the drop;
        # Postgres aborts one side, normally the drop (it waited first). Retried next pass.
        result.deferred = (f"events is busy ({type(error).__name__}: lock not granted within "
                           f"{lock_timeout_ms} ms); the next pass retries")
        return result
    result.chunks = dropped
    result.rows = sum(sizes[name][0] for name in dropped if name in sizes)
    result.bytes = sum(sizes[name][1] for name in dropped if name in sizes)
    return result

"""Pruning the pipeline's records: processed ``event_batches``, final ``deliveries``,
corrected ``reorgs`` and ``blocks`` below the indexer's window.

Each DELETE is its own short statement of at most ``batch_rows`` rows. The conditions that make a
row deletable are repeated on the target row itself, so a row changed concurrently (a failed
delivery set back to ``pending`` by ``scripts/retry_failed.py``) is re-checked by Postgres and
kept. Every kind has one ``doomed`` query, used both to delete and, for a dry run, to count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from retention.events import Budget
from retention.guards import ChainGuard


@dataclass(frozen=True)
class Doomed:
    """A kind of row: which ones may go ($1 cutoff, last parameter the row limit, NULL = all),
    and how to delete them (with the condition re-checked on the target row)."""

    select: str
    delete: str

    @property
    def count(self) -> str:
        return self.select + " SELECT count(*) FROM doomed"


# Unprocessed batches are the processor's record of work to do: never deleted.
BATCHES = Doomed(
    select="""WITH doomed AS (
        SELECT id FROM event_batches WHERE processed_at < $1 ORDER BY id LIMIT $2)""",
    delete="""DELETE FROM event_batches b USING doomed
              WHERE b.id = doomed.id AND b.processed_at < $1""")

# Final deliveries only (their attempt history is on the row). A delivered ``matched`` delivery
# of an event in its chain's protected range stays: a reorg there must find it to send exactly
# one event.removed. $2/$3: per chain, the lowest protected event id.
DELIVERIES = Doomed(
    select="""WITH guard AS (
        SELECT * FROM unnest($2::bigint[], $3::bigint[]) AS g(chain_id, first_protected_event_id)
    ), doomed AS (
        SELECT d.id FROM deliveries d
        WHERE d.created_at < $1 AND d.status IN ('delivered', 'failed', 'cancelled')
          AND NOT (d.kind = 'matched' AND d.status = 'delivered' AND EXISTS (
              SELECT 1 FROM triggers t JOIN guard g ON g.chain_id = t.chain_id
              WHERE t.id = d.trigger_id AND d.event_id >= g.first_protected_event_id))
        ORDER BY d.created_at
        LIMIT $4)""",
    delete="""DELETE FROM deliveries d USING doomed
              WHERE d.id = doomed.id AND d.status IN ('delivered', 'failed', 'cancelled')""")

# A reorg not corrected yet is work for the processor; a corrected one is only history.
REORGS = Doomed(
    select="""WITH doomed AS (
        SELECT id FROM reorgs WHERE detected_at < $1 AND corrected_at IS NOT NULL
        ORDER BY id LIMIT $2)""",
    delete="""DELETE FROM reorgs r USING doomed
              WHERE r.id = doomed.id AND r.corrected_at IS NOT NULL""")

# What the indexer keeps itself (window + margin below the checkpoint) stays; anything older is
# left over (e.g. REORG_WINDOW was lowered). $1: the rows kept below the checkpoint.
BLOCKS = Doomed(
    select="""WITH doomed AS (
        SELECT b.chain_id, b.number FROM blocks b JOIN checkpoints c ON c.chain_id = b.chain_id
        WHERE b.number <= c.block_number - $1 LIMIT $2)""",
    delete="""DELETE FROM blocks b USING doomed
              WHERE b.chain_id = doomed.chain_id AND b.number = doomed.number""")


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def _repeat(conn: asyncpg.Connection, doomed: Doomed, *args: object, batch_rows: int,
                  budget: Budget) -> tuple[int, bool]:
    """Run a batched DELETE until it deletes fewer than ``batch_rows`` (rows, True) or the
    budget runs out (rows, False). At least one statement runs: every slice makes progress."""
    query = f"{doomed.select} {doomed.delete}"
    total = 0
    while True:
        deleted = _count(await conn.execute(query, *args, batch_rows))
        total += deleted
        if deleted < batch_rows:
            return total, True
        if budget.exhausted():
            return total, False


def _guard_arrays(guards: list[ChainGuard]) -> tuple[list[int], list[int]]:
    """Per chain with protected events: (chain ids, their lowest protected event id)."""
    chains, first_ids = [], []
    for guard in guards:
        if guard.first_protected_event_id is not None:
            chains.append(guard.chain_id)
            first_ids.append(guard.first_protected_event_id)
    return chains, first_ids


async def prune_event_batches(conn: asyncpg.Connection, *, cutoff: datetime, batch_rows: int,
                              budget: Budget) -> tuple[int, bool]:
    """Delete batches processed before ``cutoff``; (rows, done)."""
    return await _repeat(conn, BATCHES, cutoff, batch_rows=batch_rows, budget=budget)


async def prune_deliveries(conn: asyncpg.Connection, *, cutoff: datetime,
                           guards: list[ChainGuard], batch_rows: int,
                           budget: Budget) -> tuple[int, bool]:
    """Delete final deliveries created before ``cutoff``, except delivered matches of protected
    events (``guards``); (rows, done)."""
    return await _repeat(conn, DELIVERIES, cutoff, *_guard_arrays(guards),
                         batch_rows=batch_rows, budget=budget)


async def prune_reorgs(conn: asyncpg.Connection, *, cutoff: datetime, batch_rows: int,
                       budget: Budget) -> tuple[int, bool]:
    """Delete corrected reorgs detected before ``cutoff``; (rows, done)."""
    return await _repeat(conn, REORGS, cutoff, batch_rows=batch_rows, budget=budget)


async def prune_blocks(conn: asyncpg.Connection, *, keep_blocks: int, batch_rows: int,
                       budget: Budget) -> tuple[int, bool]:
    """Delete ``blocks`` rows more than ``keep_blocks`` below their chain's checkpoint."""
    return await _repeat(conn, BLOCKS, keep_blocks, batch_rows=batch_rows, budget=budget)


async def count_doomed(conn: asyncpg.Connection, *, cutoffs: dict[str, datetime | None],
                       guards: list[ChainGuard], keep_blocks: int) -> dict[str, int]:
    """How many rows of each kind a pass would delete now (same predicates, counted)."""
    counts = {"blocks": await conn.fetchval(BLOCKS.count, keep_blocks, None)}
    if cutoffs["event_batches"] is not None:
        counts["event_batches"] = await conn.fetchval(BATCHES.count, cutoffs["event_batches"], None)
    if cutoffs["deliveries"] is not None:
        counts["deliveries"] = await conn.fetchval(DELIVERIES.count, cutoffs["deliveries"],
                                                   *_guard_arrays(guards), None)
    if cutoffs["reorgs"] is not None:
        counts["reorgs"] = await conn.fetchval(REORGS.count, cutoffs["reorgs"], None)
    return counts

"""What retention must never delete, however old, as queries.

Protected events (and, through them, the chunks that hold them):

- the reorg window: events of blocks above ``checkpoint − REORG_WINDOW`` of their chain (the
  indexer re-checks those blocks and may invalidate their events);
- events of an uncorrected reorg: above its ``common_ancestor`` until the processor has sent the
  corrections (``reorgs.corrected_at``);
- events of unprocessed batches (the processor has not evaluated them yet);
- events a deferred match points to (waiting for its trigger's confirmations);
- events of undelivered deliveries (``pending``/``queued``: the worker reads the event to build
  the payload; ``deliveries.event_id`` has no foreign key, so nothing else would stop it).

Protected deliveries: a ``matched`` delivery that was ``delivered`` while its event is still in
the protected block range above (a reorg there must find it to send exactly one
``event.removed``). Open deliveries are never final, so never pruned.

Each guard is evaluated from committed data. The pruning statements either re-evaluate them in
the same statement (plain Postgres: one snapshot for the check and the delete) or hold a lock
that keeps writers out between the check and the drop (TimescaleDB chunks); see
:mod:`retention.events`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

# Per chain with a checkpoint: the highest block whose events may go. Blocks above the reorg
# window, or above the common ancestor of a reorg not corrected yet, are protected.
_CHAIN_LIMITS = """
SELECT c.chain_id, c.block_number - $1 AS window_start,
       (SELECT min(r.common_ancestor) FROM reorgs r
        WHERE r.chain_id = c.chain_id AND r.corrected_at IS NULL) AS uncorrected_ancestor
FROM checkpoints c ORDER BY c.chain_id
"""

# The protected events of one chain: their lowest id (deliveries at or above it are kept) and
# their oldest block time (the floor for whole-chunk drops). Index (chain_id, block_number).
_PROTECTED_EVENTS = """
SELECT min(id) AS first_id, min(block_time) AS oldest
FROM events WHERE chain_id = $1 AND block_number > $2
"""

_UNPROCESSED = "SELECT min(min_block_time) FROM event_batches WHERE processed_at IS NULL"
_DEFERRED = "SELECT min(block_time) FROM deferred_matches"
_UNDELIVERED = """
SELECT min(e.block_time) FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.status IN ('pending', 'queued')
"""


@dataclass(frozen=True)
class ChainGuard:
    """One chain's protected range: events of blocks above ``last_prunable_block``."""

    chain_id: int
    last_prunable_block: int
    reason: str  # "reorg window" or "uncorrected reorg"
    first_protected_event_id: int | None  # None: no protected event stored yet
    oldest_protected_time: datetime | None


@dataclass(frozen=True)
class Pin:
    """Something that holds the events horizon back: events at or after ``since`` stay."""

    since: datetime
    reason: str


async def chain_guards(conn: asyncpg.Connection, *, reorg_window: int) -> list[ChainGuard]:
    """The protected block range of every chain with a checkpoint (chains without one have no
    indexer state to protect)."""
    guards = []
    for row in await conn.fetch(_CHAIN_LIMITS, reorg_window):
        last = row["window_start"]
        reason = "reorg window"
        if row["uncorrected_ancestor"] is not None and row["uncorrected_ancestor"] < last:
            last, reason = row["uncorrected_ancestor"], "uncorrected reorg"
        protected = await conn.fetchrow(_PROTECTED_EVENTS, row["chain_id"], last)
        guards.append(ChainGuard(chain_id=row["chain_id"], last_prunable_block=last,
                                 reason=reason, first_protected_event_id=protected["first_id"],
                                 oldest_protected_time=protected["oldest"]))
    return guards


async def pins(conn: asyncpg.Connection, guards: list[ChainGuard]) -> list[Pin]:
    """Every reason an old event must stay, with the oldest block time it protects; sorted,
    oldest first (the first one is what holds a whole-chunk drop back)."""
    found = [Pin(g.oldest_protected_time, f"{g.reason} of chain {g.chain_id}")
             for g in guards if g.oldest_protected_time is not None]
    for query, reason in ((_UNPROCESSED, "unprocessed event batches (processor behind)"),
                          (_DEFERRED, "matches waiting for confirmations"),
                          (_UNDELIVERED, "undelivered deliveries")):
        since = await conn.fetchval(query)
        if since is not None:
            found.append(Pin(since, reason))
    return sorted(found, key=lambda pin: pin.since)


def floor(cutoff: datetime, found: list[Pin]) -> tuple[datetime, Pin | None]:
    """The effective horizon: ``cutoff``, held back by the oldest pin before it (returned)."""
    if found and found[0].since < cutoff:
        return found[0].since, found[0]
    return cutoff, None

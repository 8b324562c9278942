"""Reorg corrections (guarantee 4): for the events a reorg invalidated,

- ``matched`` deliveries still ``pending``/``queued`` and held by no worker become ``cancelled``
  (their RQ job carries a batch of ids and is left in Redis: workers skip rows that are final,
  so the row is the cancel);
- ``matched`` deliveries under a worker's lease (an attempt in flight, or one whose outcome was
  never recorded) are left to that lease, never waited for: if the attempt delivers, the
  worker's outcome transaction creates the ``removed`` delivery; otherwise the next claim finds
  the event invalidated and cancels the row, creating the ``removed`` delivery too when the lost
  attempt may have been sent (:mod:`workers.store`, :mod:`workers.attempt`);
- ``matched`` deliveries already ``delivered`` get exactly one ``removed`` delivery (the unique
  key on (action, event, kind) makes it one whoever runs this, however often);
- deferred matches are dropped (ripening re-checks validity too).

A reorg row is corrected once (``corrected_at``), claimed ``FOR UPDATE SKIP LOCKED``. As a
safety net for a batch that loaded an event just before it was invalidated and committed its
deliveries just after the correction, reorgs detected within ``RECHECK_WINDOW`` are corrected
again on every sweep; that is idempotent. Workers check ``invalidated`` before sending as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from processor import metrics

RECHECK_WINDOW_SECONDS = 600

_CLAIM_REORGS = """
SELECT id, chain_id, common_ancestor
FROM reorgs
WHERE corrected_at IS NULL
   OR ($1 AND detected_at > now() - make_interval(secs => $2))
ORDER BY id
LIMIT 50
FOR UPDATE SKIP LOCKED
"""

# The reorg's chain and common ancestor bound the invalidated events (index on
# (chain_id, block_number)); events invalidated by earlier reorgs above it are harmless repeats.
_INVALIDATED = """
SELECT id FROM events WHERE chain_id = $1 AND block_number > $2 AND invalidated
"""

_CANCEL = """
UPDATE deliveries
SET status = 'cancelled', last_error = 'event invalidated by a chain reorganisation'
WHERE event_id = ANY($1::bigint[]) AND kind = 'matched' AND status IN ('pending', 'queued')
  AND leased_by IS NULL
RETURNING id
"""

_REMOVED = """
INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status, replay, event_committed_at)
SELECT action_id, trigger_id, event_id, 'removed', 'pending', replay, now()
FROM deliveries
WHERE event_id = ANY($1::bigint[]) AND kind = 'matched' AND status = 'delivered'
ON CONFLICT (action_id, event_id, kind) DO NOTHING
RETURNING id
"""

_DROP_DEFERRED = "DELETE FROM deferred_matches WHERE event_id = ANY($1::bigint[])"

_CORRECTED = "UPDATE reorgs SET corrected_at = now() WHERE id = ANY($1::bigint[])"


@dataclass
class Corrections:
    reorgs: int = 0
    cancelled: int = 0
    removed_ids: list[int] = field(default_factory=list)


async def correct_reorgs(conn: asyncpg.Connection, *, recheck: bool = False,
                         recheck_window: float = RECHECK_WINDOW_SECONDS) -> Corrections:
    """Correct uncorrected reorgs (and, with ``recheck``, recent ones again) in one transaction
    on ``conn``; return the ``removed`` delivery ids to enqueue after commit."""
    result = Corrections()
    async with conn.transaction():
        reorgs = await conn.fetch(_CLAIM_REORGS, recheck, recheck_window)
        for reorg in reorgs:
            event_ids = [row["id"] for row in
                         await conn.fetch(_INVALIDATED, reorg["chain_id"], reorg["common_ancestor"])]
            if event_ids:
                # Leased rows are skipped, not waited for: workers hold no lock across a POST
                # and resolve their own leases (see the module docstring).
                result.cancelled += len(await conn.fetch(_CANCEL, event_ids))
                created = await conn.fetch(_REMOVED, event_ids)
                result.removed_ids += [row["id"] for row in created]
                await conn.execute(_DROP_DEFERRED, event_ids)
        if reorgs:
            await conn.execute(_CORRECTED, [reorg["id"] for reorg in reorgs])
        result.reorgs = len(reorgs)
    metrics.CANCELLED.inc(result.cancelled)
    metrics.DELIVERIES_CREATED.labels("removed").inc(len(result.removed_ids))
    return result

"""Ripen deferred matches: a trigger with ``confirmations = N`` fires only once the chain's
checkpoint is at ``event.block_number + N`` or beyond, and only if the event is still valid.

Rows are claimed ``FOR UPDATE SKIP LOCKED`` and deleted in the transaction that creates their
deliveries, so several processors never ripen the same match twice (and the unique key of
``deliveries`` would absorb it anyway). Matches of invalidated events are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from processor.outbox import insert_deliveries

RIPEN_LIMIT = 5000

_CLAIM_DUE = """
WITH due AS (
    SELECT dm.action_id, dm.event_id
    FROM deferred_matches dm
    JOIN checkpoints c ON c.chain_id = dm.chain_id
    WHERE dm.ready_at_block <= c.block_number
    ORDER BY dm.ready_at_block
    LIMIT $1
    FOR UPDATE OF dm SKIP LOCKED
)
DELETE FROM deferred_matches dm USING due
WHERE dm.action_id = due.action_id AND dm.event_id = due.event_id
RETURNING dm.action_id, dm.trigger_id, dm.event_id, dm.chain_id, dm.block_time, dm.replay
"""

# Exact block_time values keep the lookup to the events' own chunks on a hypertable; only
# enabled actions of enabled triggers still fire.
_STILL_VALID = """
SELECT u.action_id, u.trigger_id, u.event_id
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(action_id, trigger_id, event_id)
JOIN events e ON e.chain_id = $4 AND e.id = u.event_id AND e.block_time = ANY($5::timestamptz[])
                 AND NOT e.invalidated
JOIN actions a ON a.id = u.action_id AND a.enabled
JOIN triggers t ON t.id = u.trigger_id AND t.enabled
"""


@dataclass
class Ripened:
    delivery_ids: list[int] = field(default_factory=list)
    dropped: int = 0


async def ripen_deferred(conn: asyncpg.Connection, *, limit: int = RIPEN_LIMIT) -> Ripened:
    """Turn due deferred matches into ``pending`` deliveries in one transaction on ``conn``;
    return the created ids (to enqueue after commit) and how many were dropped as invalid."""
    result = Ripened()
    async with conn.transaction():
        due = await conn.fetch(_CLAIM_DUE, limit)
        if not due:
            return result
        groups: dict[tuple[int, bool], list[asyncpg.Record]] = {}
        for row in due:
            groups.setdefault((row["chain_id"], row["replay"]), []).append(row)
        for (chain_id, replay), rows in groups.items():
            valid = await conn.fetch(
                _STILL_VALID, [r["action_id"] for r in rows], [r["trigger_id"] for r in rows],
                [r["event_id"] for r in rows], chain_id, list({r["block_time"] for r in rows}))
            result.dropped += len(rows) - len(valid)
            # event_committed_at: the moment the delivery became due, so the latency histogram
            # measures the processor, not the confirmation wait.
            now = await conn.fetchval("SELECT now()")
            result.delivery_ids += await insert_deliveries(
                conn, action_ids=[r["action_id"] for r in valid],
                trigger_ids=[r["trigger_id"] for r in valid],
                event_ids=[r["event_id"] for r in valid], replay=replay, committed_at=now)
    return result

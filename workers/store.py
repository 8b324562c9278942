"""Database functions of the workers (asyncpg; the caller owns the transaction).

Lease protocol (no row lock is held across a network call):

1. :func:`claim_deliveries` leases the open, due, unleased rows of a batch in one short
   statement (``FOR UPDATE SKIP LOCKED`` only there): ``leased_by`` names the claim,
   ``lease_expires_at`` is the attempt's timeout plus :data:`LEASE_MARGIN_SECONDS`.
2. The POSTs run with no transaction open.
3. :func:`record_outcomes` writes the outcomes in a second short transaction, guarded by the
   lease: a row whose lease was taken over by another claim is left alone. A ``delivered``
   outcome is written even over a row a reorg correction cancelled meanwhile (the webhook did
   arrive); the same transaction then creates the ``removed`` delivery
   (:func:`ensure_removed_deliveries`). Any other outcome never reopens a final row.

A worker that dies mid-attempt loses its holder lock at once (:mod:`core.leases`), or its lease
expires; the row is then claimed again by whoever gets a job for it, and the webhook is sent
again with the same ``webhook-id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from core.leases import lease_free_sql

# Unclaimed open rows due within this horizon are rechecked by the caller: held by another
# transaction, or a job that ran a little early (RQ schedules at whole seconds; clocks of the
# worker and database hosts may differ slightly).
RECHECK_HORIZON_SECONDS = 5.0
# A lease lasts the attempt's timeout plus this margin (to record the outcome, with retries).
LEASE_MARGIN_SECONDS = 30.0
# The upper bound of an action's own ``timeout`` (workers.action.WebhookAction).
MAX_ACTION_TIMEOUT_SECONDS = 300.0

# ``lease_lost``: the row carries a lease nobody recorded (its worker died mid-attempt or the
# outcome could not be written): the webhook may have been sent.
_CLAIM = f"""
WITH due AS (
    SELECT d.id, d.leased_by IS NOT NULL AS lease_lost
    FROM deliveries d
    WHERE d.id = ANY($1::bigint[])
      AND d.status IN ('pending', 'queued')
      AND d.next_attempt_at <= clock_timestamp()
      AND {lease_free_sql("d")}
    ORDER BY d.id
    FOR UPDATE OF d SKIP LOCKED
), leased AS (
    UPDATE deliveries d SET
        leased_by = $2,
        lease_expires_at = clock_timestamp() + make_interval(secs => $4 + $5 * CASE
            WHEN jsonb_typeof(a.config -> 'timeout') = 'number'
            THEN least(greatest((a.config ->> 'timeout')::float8, 0), {MAX_ACTION_TIMEOUT_SECONDS})
            ELSE $3 END)
    FROM due, actions a
    WHERE d.id = due.id AND a.id = d.action_id
    RETURNING d.id, d.kind, d.replay, d.attempts, d.event_id, d.trigger_id, d.created_at,
              d.action_id
)
SELECT d.id, d.kind, d.replay, d.attempts, d.event_id, d.trigger_id, d.created_at, d.action_id,
       due.lease_lost,
       a.config::text AS config, a.secret,
       CASE WHEN a.previous_secret_expires_at > clock_timestamp() THEN a.previous_secret
       END AS previous_secret,
       a.enabled AND t.enabled AS enabled, t.name AS trigger_name, t.event_signature,
       e.id IS NOT NULL AS event_found, e.chain_id, e.block_number, e.block_hash, e.block_time,
       e.tx_hash, e.tx_index, e.log_index, e.address, e.topic0, e.topic1, e.topic2, e.topic3,
       e.data, e.invalidated
FROM leased d
JOIN due ON due.id = d.id
JOIN actions a ON a.id = d.action_id
JOIN triggers t ON t.id = d.trigger_id
LEFT JOIN events e ON e.id = d.event_id
ORDER BY d.id
"""

# The claimable rows among a job's ids and their endpoint URL, read without locking (the caller
# picks what endpoint capacity allows; the claim statement then locks and re-checks those).
_CANDIDATES = f"""
SELECT d.id, a.config ->> 'url' AS url, d.replay
FROM deliveries d
JOIN actions a ON a.id = d.action_id
WHERE d.id = ANY($1::bigint[])
  AND d.status IN ('pending', 'queued')
  AND d.next_attempt_at <= clock_timestamp()
  AND {lease_free_sql("d")}
ORDER BY d.id
"""

_RELEASE = """
UPDATE deliveries AS d SET leased_by = NULL, lease_expires_at = NULL
FROM unnest($1::bigint[], $2::text[]) AS r(id, lease)
WHERE d.id = r.id AND d.leased_by = r.lease
"""

# A row under someone else's lease is due when the lease ends (its holder normally records the
# outcome and schedules any retry itself long before).
_UNCLAIMED_SOON = f"""
SELECT id, extract(epoch FROM due)::float8 AS due
FROM (SELECT id, greatest(next_attempt_at, coalesce(lease_expires_at, next_attempt_at)) AS due
      FROM deliveries
      WHERE id = ANY($1::bigint[]) AND NOT (id = ANY($2::bigint[]))
        AND status IN ('pending', 'queued')) AS open
WHERE due <= clock_timestamp() + interval '{RECHECK_HORIZON_SECONDS} seconds'
"""

_RECORD = """
UPDATE deliveries AS d SET
    status = o.status,
    attempts = d.attempts + o.attempted::int,
    last_status_code = CASE WHEN o.attempted THEN o.status_code ELSE d.last_status_code END,
    last_error = o.error,
    delivered_at = CASE WHEN o.status = 'delivered' THEN clock_timestamp() ELSE d.delivered_at END,
    latency_ms = CASE WHEN o.status = 'delivered'
                      THEN extract(epoch FROM clock_timestamp() - d.created_at) * 1000
                      ELSE d.latency_ms END,
    next_attempt_at = CASE WHEN o.delay IS NULL THEN d.next_attempt_at
                           ELSE clock_timestamp() + make_interval(secs => o.delay) END,
    leased_by = NULL,
    lease_expires_at = NULL
FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::int[], $5::text[], $6::float8[],
            $7::text[])
     AS o(id, status, attempted, status_code, error, delay, lease)
WHERE d.id = o.id AND d.leased_by = o.lease
  AND (o.status = 'delivered' OR d.status IN ('pending', 'queued'))
RETURNING d.id, d.latency_ms, extract(epoch FROM d.next_attempt_at)::float8 AS next_attempt_epoch
"""

# After a success: if the event was invalidated meanwhile (a reorg raced the attempt), the
# correction must exist. The unique key makes this exactly one, whoever inserts it first.
_ENSURE_REMOVED = """
INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status, replay, queued_at,
                        event_committed_at)
SELECT d.action_id, d.trigger_id, d.event_id, 'removed', 'queued', d.replay, clock_timestamp(),
       d.event_committed_at
FROM deliveries d JOIN events e ON e.id = d.event_id
WHERE d.id = ANY($1::bigint[]) AND d.kind = 'matched' AND e.invalidated
ON CONFLICT (action_id, event_id, kind) DO NOTHING
RETURNING id
"""


@dataclass(frozen=True)
class Outcome:
    """The result of handling one claimed delivery. ``attempted`` counts toward ``attempts``;
    ``delay`` (seconds) is set when a retry is scheduled."""

    delivery_id: int
    status: str
    attempted: bool
    status_code: int | None = None
    error: str | None = None
    delay: float | None = None
    # Whether the endpoint answered (2xx, or a permanent refusal) or failed to (timeout,
    # connection error, 408/429/5xx); ``None`` when nothing was sent. Feeds the circuit breaker.
    endpoint_ok: bool | None = None


@dataclass(slots=True)  # one per delivery: a frozen init costs ~4x (never mutated)
class Recorded:
    delivery_id: int
    latency_ms: float | None
    next_attempt_epoch: float


async def claim_candidates(conn: asyncpg.Connection, delivery_ids: Sequence[int],
                           ) -> list[tuple[int, str | None, bool]]:
    """The open, due, unleased deliveries among ``delivery_ids`` with their webhook URL and
    whether they are a refire's (``replay``), as of now (not locked: :func:`claim_deliveries`
    re-checks what it leases)."""
    return [(row["id"], row["url"], row["replay"])
            for row in await conn.fetch(_CANDIDATES, list(delivery_ids))]


async def claim_deliveries(conn: asyncpg.Connection, delivery_ids: Sequence[int], *, lease: str,
                           default_timeout: float, margin: float = LEASE_MARGIN_SECONDS,
                           rounds: int = 1) -> list[asyncpg.Record]:
    """Lease and load the open, due deliveries among ``delivery_ids`` with their action, trigger
    and event; commits with the caller's transaction (one statement: autocommit is enough).
    Final, not-yet-due, leased and (right now) locked rows are left out. ``lease`` names this
    claim (unique per claim); the outcome must be recorded with the same name. The lease lasts
    ``rounds`` times the attempt's timeout (deliveries may wait for an endpoint slot) plus
    ``margin`` seconds."""
    return list(await conn.fetch(_CLAIM, list(delivery_ids), lease, default_timeout, margin,
                                 rounds))


async def release_leases(conn: asyncpg.Connection, leases: Sequence[tuple[int, str]]) -> None:
    """End leases without an attempt (the endpoint's circuit opened meanwhile): the rows are
    claimable again at once, with attempts and errors untouched."""
    if leases:
        await conn.execute(_RELEASE, [i for i, _ in leases], [lease for _, lease in leases])


async def unclaimed_soon(conn: asyncpg.Connection, delivery_ids: Sequence[int],
                         claimed_ids: Sequence[int]) -> dict[int, float]:
    """Open deliveries among ``delivery_ids`` that were not claimed although due now or within
    :data:`RECHECK_HORIZON_SECONDS` (locked by someone else, or the job came early), with the
    unix time they are due."""
    rows = await conn.fetch(_UNCLAIMED_SOON, list(delivery_ids), list(claimed_ids))
    return {row["id"]: row["due"] for row in rows}


async def record_outcomes(conn: asyncpg.Connection, outcomes: Sequence[Outcome], *,
                          lease: str | Sequence[str]) -> list[Recorded]:
    """Write each outcome to its row (status, attempts, last status/error, timestamps) and end
    the lease, if the row is still under ``lease`` (one for all, or one per outcome). Rows
    another claim took over are left out of the result, as are non-``delivered`` outcomes of
    rows that became final meanwhile."""
    if not outcomes:
        return []
    leases = [lease] * len(outcomes) if isinstance(lease, str) else list(lease)
    rows = await conn.fetch(
        _RECORD,
        [o.delivery_id for o in outcomes], [o.status for o in outcomes],
        [o.attempted for o in outcomes], [o.status_code for o in outcomes],
        [o.error for o in outcomes], [o.delay for o in outcomes], leases)
    return [Recorded(row["id"], row["latency_ms"], float(row["next_attempt_epoch"])) for row in rows]


async def ensure_removed_deliveries(conn: asyncpg.Connection,
                                    delivered_ids: Sequence[int]) -> list[int]:
    """Create the ``removed`` delivery of each ``matched`` delivery among ``delivered_ids``
    (delivered, or possibly sent by a lost attempt) whose event is now invalidated (status
    ``queued``; the caller enqueues them after commit). Returns new ids."""
    if not delivered_ids:
        return []
    return [row["id"] for row in await conn.fetch(_ENSURE_REMOVED, list(delivered_ids))]

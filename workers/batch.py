"""One batch of deliveries in one short-lived transaction: claim, send concurrently, record.

The rows stay locked while their POSTs are in flight (see :mod:`workers.store`), so the
transaction lasts as long as the slowest attempt of the batch (bounded by its timeout). Each
delivery keeps its own outcome; one endpoint's failure does not affect its neighbours.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog
from yarl import URL

from core.crypto import Keyring
from core.errors import EndpointRejected
from workers import metrics
from workers.action import parse_action
from workers.attempt import RetryPolicy, attempt_delivery
from workers.delivery import WebhookClient
from workers.retry import is_exhausted, retry_delay
from workers.store import (
    Outcome,
    claim_deliveries,
    ensure_removed_deliveries,
    record_outcomes,
    unclaimed_soon,
)

log = structlog.get_logger(__name__)


@dataclass
class BatchReport:
    """What a batch did, for the caller's after-commit work (Redis) and for logs."""

    outcomes: list[Outcome] = field(default_factory=list)
    # delivery id → unix time its retry is due
    retries: dict[int, float] = field(default_factory=dict)
    # delivery id → unix time due, for open rows this batch could not claim (see store)
    unclaimed: dict[int, float] = field(default_factory=dict)
    removed_created: list[int] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


# Outcome status of an attempted delivery → ``outcome`` of blockhook_workers_endpoint_attempts_total.
_ENDPOINT_OUTCOMES = {"delivered": "delivered", "queued": "retry", "failed": "failed"}


def _endpoint_host(config_json: str) -> str:
    try:
        return URL(str(parse_action(config_json).url)).host or "?"
    except (EndpointRejected, TypeError, ValueError):
        return "?"


def _observe(row: asyncpg.Record, outcome: Outcome) -> None:
    """Per-endpoint counts and the chain-to-receiver latency of one committed outcome."""
    if outcome.attempted and outcome.status in _ENDPOINT_OUTCOMES:
        metrics.ENDPOINT_ATTEMPTS.labels(_endpoint_host(row["config"]),
                                         _ENDPOINT_OUTCOMES[outcome.status]).inc()
    if (outcome.status == "delivered" and row["kind"] == "matched" and not row["replay"]
            and row["block_time"] is not None):
        metrics.EVENT_TO_WEBHOOK.observe(max(0.0, time.time() - row["block_time"].timestamp()))


async def _attempt_or_requeue(row: asyncpg.Record, *, client: WebhookClient,
                              policy: RetryPolicy, jitter: float,
                              keyring: Keyring | None) -> Outcome:
    """``attempt_delivery``, with a bug in one delivery contained to that delivery: it stays
    queued for a retry (with the error type recorded) and its neighbours' outcomes commit."""
    try:
        return await attempt_delivery(row, client=client, policy=policy, jitter=jitter,
                                      keyring=keyring)
    except Exception as error:
        log.exception("delivery handling crashed", delivery_id=row["id"])
        attempts = row["attempts"] + 1
        reason = f"internal error: {type(error).__name__}"
        if is_exhausted(attempts=attempts, max_attempts=policy.max_attempts):
            return Outcome(row["id"], "failed", True, None, f"gave up after {attempts} "
                                                           f"attempts: {reason}")
        delay = retry_delay(attempts=attempts, schedule=policy.schedule, jitter=jitter)
        return Outcome(row["id"], "queued", True, None, reason, delay)


async def deliver_batch_once(pool: asyncpg.Pool, *, client: WebhookClient, policy: RetryPolicy,
                             delivery_ids: Sequence[int],
                             keyring: Keyring | None = None) -> BatchReport:
    """Claim, attempt and record the open, due deliveries among ``delivery_ids``.

    Committed atomically: on a database error nothing is recorded and the error propagates (the
    rows stay open; a later job or the processor's sweep brings them back)."""
    report = BatchReport()
    # One jitter draw per batch: deliveries failing together share their retry time and are
    # rescheduled as one job, while separate batches still spread out.
    jitter = random.random()
    async with pool.acquire() as conn, conn.transaction():
        claimed = await claim_deliveries(conn, delivery_ids)
        if len(claimed) < len(delivery_ids):
            report.unclaimed = await unclaimed_soon(
                conn, delivery_ids, [row["id"] for row in claimed])
        report.outcomes = list(await asyncio.gather(*(
            _attempt_or_requeue(row, client=client, policy=policy, jitter=jitter,
                                keyring=keyring)
            for row in claimed)))
        recorded = await record_outcomes(conn, report.outcomes)
        delivered = [o.delivery_id for o in report.outcomes if o.status == "delivered"]
        report.removed_created = await ensure_removed_deliveries(conn, delivered)
    by_id = {o.delivery_id: o for o in report.outcomes}
    for claimed_row in claimed:
        _observe(claimed_row, by_id[claimed_row["id"]])
    for row in recorded:
        outcome = by_id[row.delivery_id]
        if outcome.status == "delivered" and row.latency_ms is not None:
            metrics.DELIVERY_LATENCY.observe(row.latency_ms / 1000)
        elif outcome.delay is not None:
            report.retries[row.delivery_id] = row.next_attempt_epoch
    return report

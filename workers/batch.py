"""One batch of deliveries: lease (one short statement), send concurrently with no transaction
open, record the outcomes (a second short transaction, guarded by the lease).

See :mod:`workers.store` for the lease protocol. A database error while recording is retried
with backoff for up to :data:`RECORD_RETRY_SECONDS` (the webhooks were sent: giving up would get
them sent again once the leases expire); a permanent SQL error is raised at once. Each delivery
keeps its own outcome; one endpoint's failure does not affect its neighbours.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog

from core.backoff import Backoff
from core.crypto import Keyring
from core.db import is_transient
from workers import metrics
from workers.attempt import RetryPolicy, attempt_delivery
from workers.delivery import WebhookClient
from workers.retry import is_exhausted, retry_delay
from workers.store import (
    Outcome,
    Recorded,
    claim_deliveries,
    ensure_removed_deliveries,
    record_outcomes,
    unclaimed_soon,
)

log = structlog.get_logger(__name__)

RECORD_RETRY_SECONDS = 120.0


class Leases:
    """Names the claims of this process: ``host:pid:nonce/n``, unique per claim."""

    def __init__(self, worker_id: str | None = None) -> None:
        self.worker_id = worker_id or (f"{socket.gethostname()}:{os.getpid()}:"
                                       f"{secrets.token_hex(3)}")
        self._numbers = itertools.count(1)

    def next(self) -> str:
        return f"{self.worker_id}/{next(self._numbers)}"


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
                             delivery_ids: Sequence[int], leases: Leases,
                             keyring: Keyring | None = None,
                             record_retry_seconds: float = RECORD_RETRY_SECONDS) -> BatchReport:
    """Lease, attempt and record the open, due deliveries among ``delivery_ids``.

    A database error while leasing propagates (nothing was sent; the rows stay open for a later
    job or the processor's sweep). Once sent, outcomes are recorded with retries (see the module
    docstring); if that still fails the error propagates and the leases expire."""
    report = BatchReport()
    # One jitter draw per batch: deliveries failing together share their retry time and are
    # rescheduled as one job, while separate batches still spread out.
    jitter = random.random()
    lease = leases.next()
    async with pool.acquire() as conn:
        claimed = await claim_deliveries(conn, delivery_ids, lease=lease,
                                         default_timeout=policy.default_timeout)
        if len(claimed) < len(delivery_ids):
            report.unclaimed = await unclaimed_soon(
                conn, delivery_ids, [row["id"] for row in claimed])
    if not claimed:
        return report
    report.outcomes = list(await asyncio.gather(*(
        _attempt_or_requeue(row, client=client, policy=policy, jitter=jitter, keyring=keyring)
        for row in claimed)))
    # A matched delivery whose earlier attempt was lost (lease expired unrecorded) may have been
    # sent: cancelling it for a reorg must still bring the event.removed.
    lost = {row["id"] for row in claimed if row["lease_lost"]}
    maybe_sent = [o.delivery_id for o in report.outcomes
                  if o.status == "delivered" or (o.status == "cancelled" and o.delivery_id in lost)]
    recorded, report.removed_created = await _record(
        pool, report.outcomes, lease=lease, maybe_sent=maybe_sent,
        retry_seconds=record_retry_seconds)
    by_id = {o.delivery_id: o for o in report.outcomes}
    for row in recorded:
        outcome = by_id[row.delivery_id]
        if outcome.status == "delivered" and row.latency_ms is not None:
            metrics.DELIVERY_LATENCY.observe(row.latency_ms / 1000)
        elif outcome.delay is not None:
            report.retries[row.delivery_id] = row.next_attempt_epoch
    return report


async def _record(pool: asyncpg.Pool, outcomes: Sequence[Outcome], *, lease: str,
                  maybe_sent: Sequence[int],
                  retry_seconds: float) -> tuple[list[Recorded], list[int]]:
    """Record ``outcomes`` under ``lease`` and create the ``removed`` deliveries they call for,
    in one transaction; retry transient database errors until ``retry_seconds`` have passed."""
    deadline = time.monotonic() + retry_seconds
    backoff = Backoff(base=0.1, cap=5.0)
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                recorded = await record_outcomes(conn, outcomes, lease=lease)
                removed = await ensure_removed_deliveries(conn, maybe_sent)
            return recorded, removed
        except Exception as error:
            if not is_transient(error) or time.monotonic() >= deadline:
                raise
            delay = backoff.next_delay()
            log.warning("could not record delivery outcomes, retrying", lease=lease,
                        deliveries=len(outcomes), error=str(error) or repr(error),
                        retry_in=round(delay, 2))
            await asyncio.sleep(delay)

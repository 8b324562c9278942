"""The delivery dispatcher of a worker process: claims deliveries per endpoint capacity, sends
them concurrently in the background, records outcomes in small batches.

An RQ job hands its ids to :meth:`Dispatcher.submit` and returns as soon as they are claimed
(or parked): it never waits for a POST, so one slow endpoint cannot hold the job queue.

1. **Claim** (one short transaction): lock the claimable rows of the job (``SKIP LOCKED``),
   group them by endpoint (:mod:`workers.endpoints`), lease as many per endpoint as its
   capacity allows (:func:`workers.store.claim_deliveries`), and park the others, unclaimed, in
   the endpoint's waiting list. Rows locked by someone else right now are reported back to the
   caller (:class:`Submitted`) for a recheck.
2. **Send**: with no transaction open, by at most the endpoint's cap of sender tasks, each
   sending the endpoint's leased deliveries one after another (in lease order). A delivery
   whose endpoint's circuit opened while it waited for a sender is released (lease ended, no
   attempt used) and parked.
3. **Record**: outcomes are written by one recorder task in batches (a transaction per batch,
   guarded by each row's lease, retried on transient errors; :func:`record_outcomes_durably`),
   then the caller's ``after_commit`` schedules retries and enqueues ``removed`` deliveries.
   Each recorded lease frees a place: the endpoint's waiting list is claimed from next.

Parked ids live in memory only; if the process dies, the rows are still ``queued`` and
unleased, and the processor's lost-job sweep re-enqueues them. The recorder and the
maintenance task (probes, gauges, circuit state in Redis) log their errors and carry on; if one
ends anyway, or the database rejects an outcome as an SQL error, ``on_fatal`` is called (the
worker then exits non-zero).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from core.backoff import Backoff
from core.crypto import Keyring
from core.db import DatabaseBroken, is_transient
from workers import metrics
from workers.attempt import RetryPolicy, attempt_delivery
from workers.delivery import WebhookClient
from workers.endpoints import HOST_BACKLOG_FACTOR, Endpoint, endpoint_key
from workers.retry import is_exhausted, retry_delay
from workers.store import (
    Outcome,
    Recorded,
    claim_candidates,
    claim_deliveries,
    ensure_removed_deliveries,
    record_outcomes,
    release_leases,
    unclaimed_soon,
)

log = structlog.get_logger(__name__)

RECORD_RETRY_SECONDS = 120.0
RECORD_BATCH = 200
# The recorder waits this long for more outcomes before a small batch (fewer transactions).
RECORD_LINGER_SECONDS = 0.01
MAINTENANCE_INTERVAL_SECONDS = 1.0
# Ids parked per endpoint at most; beyond, the sweep brings them back.
WAITING_LIMIT = 100_000


# Outcome status of an attempted delivery → ``outcome`` of blockhook_workers_endpoint_attempts_total.
_ENDPOINT_OUTCOMES = {"delivered": "delivered", "queued": "retry", "failed": "failed"}


def _live_block_time(row: asyncpg.Record) -> float | None:
    if row["kind"] != "matched" or row["replay"] or row["block_time"] is None:
        return None
    return float(row["block_time"].timestamp())


# (endpoint key, outcome status) → the labelled counter (a label lookup takes a lock per call).
_endpoint_attempts: dict[tuple[str, str], Any] = {}


def _endpoint_attempts_counter(key: str, status: str) -> Any:
    counter = _endpoint_attempts.get((key, status))
    if counter is None:
        host = key.rsplit(":", 1)[0] if key != "?" else "?"
        counter = _endpoint_attempts[(key, status)] = metrics.ENDPOINT_ATTEMPTS.labels(
            host, _ENDPOINT_OUTCOMES[status])
    return counter


def _observe(done: _Done, outcome: Outcome, counts: dict[tuple[str, str], int]) -> None:
    """The chain → receiver latency of one recorded outcome; its per-endpoint-host count is
    added to ``counts`` (incremented once per batch: each increment takes a lock)."""
    if outcome.attempted and outcome.status in _ENDPOINT_OUTCOMES:
        counts[(done.endpoint.key, outcome.status)] += 1
    if outcome.status == "delivered" and done.live_block_time is not None:
        metrics.EVENT_TO_WEBHOOK.observe(max(0.0, time.time() - done.live_block_time))


class Leases:
    """Names the claims of this process: ``host:pid:nonce/n``, unique per claim."""

    def __init__(self, worker_id: str | None = None) -> None:
        self.worker_id = worker_id or (f"{socket.gethostname()}:{os.getpid()}:"
                                       f"{secrets.token_hex(3)}")
        self._numbers = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.worker_id}/{next(self._numbers)}"


@dataclass
class BatchReport:
    """Committed outcomes, for the caller's after-commit work (Redis) and for logs."""

    outcomes: list[Outcome] = field(default_factory=list)
    # delivery id → unix time its retry is due
    retries: dict[int, float] = field(default_factory=dict)
    # delivery id → unix time due, for open rows a claim could not lock (see store)
    unclaimed: dict[int, float] = field(default_factory=dict)
    removed_created: list[int] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


@dataclass
class Submitted:
    """What :meth:`Dispatcher.submit` did with a job's ids."""

    claimed: int = 0
    parked: int = 0
    # delivery id → unix time due: rows locked by another transaction right now (or due soon)
    unclaimed: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)  # one per delivery: a frozen init costs ~4x (never mutated)
class _Done:
    """A finished delivery waiting to be recorded (or, with ``outcome=None``, released)."""

    delivery_id: int
    lease: str
    endpoint: Endpoint
    outcome: Outcome | None
    lease_lost: bool = False
    # Block timestamp (unix seconds) of a live event.matched delivery: the chain → receiver
    # latency is observed once its delivery is recorded.
    live_block_time: float | None = None
    history: bool = False  # a refire's (``replay``): parked behind live ones if released


class _Ready:
    """An endpoint's leased deliveries waiting for one of its senders, in two FIFO lanes: live
    ones are sent before a refire's history (``replay``) already queued."""

    __slots__ = ("live", "history")

    def __init__(self) -> None:
        self.live: collections.deque[tuple[asyncpg.Record, str, float]] = collections.deque()
        self.history: collections.deque[tuple[asyncpg.Record, str, float]] = collections.deque()

    def extend(self, ready: list[tuple[asyncpg.Record, str, float]]) -> None:
        for item in ready:
            (self.history if item[0]["replay"] else self.live).append(item)

    def popleft(self) -> tuple[asyncpg.Record, str, float]:
        return self.live.popleft() if self.live else self.history.popleft()

    def __bool__(self) -> bool:
        return bool(self.live or self.history)


@dataclass(frozen=True)
class DispatchSettings:
    endpoint_concurrency: int = 10
    circuit_failures: int = 5
    probe_interval: float = 30.0


class Dispatcher:
    """Bound to the event loop it is started on; see the module docstring."""

    def __init__(self, *, pool: asyncpg.Pool, client: WebhookClient, policy: RetryPolicy,
                 leases: Callable[[], str], settings: DispatchSettings,
                 after_commit: Callable[[BatchReport], None],
                 keyring: Keyring | None = None,
                 publish: Callable[[dict[str, Endpoint]], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None,
                 record_retry_seconds: float = RECORD_RETRY_SECONDS) -> None:
        self.pool = pool
        self.client = client
        self.policy = policy
        self.keyring = keyring
        self.settings = settings
        self._next_lease = leases
        self._after_commit = after_commit
        self._publish = publish
        self._on_fatal = on_fatal
        self._record_retry_seconds = record_retry_seconds
        self.endpoints: dict[str, Endpoint] = {}
        # Leased deliveries of each endpoint waiting for one of its senders, and how many
        # senders it has (at most its cap: the concurrency limit). A sender is a task that
        # sends one delivery after another while there are any: no task per delivery.
        self._ready: dict[str, _Ready] = {}
        self._senders: dict[str, int] = {}
        self._refilling: set[str] = set()
        # Endpoints a claim in progress refers to: maintenance must not forget them meanwhile.
        self._pinned: dict[str, int] = defaultdict(int)
        self._done: list[_Done] = []
        self._done_ready = asyncio.Event()
        self._recording = 0  # outcomes taken by the recorder, not committed yet
        self._sending: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._background = [
            asyncio.create_task(self._guard("recorder", self._recorder)),
            asyncio.create_task(self._guard("maintenance", self._maintenance)),
        ]

    async def drain(self, within: float) -> bool:
        """Wait until nothing is leased or waiting to be recorded, and no endpoint with a closed
        circuit has parked deliveries; ``False`` if that took longer than ``within`` seconds."""
        deadline = time.monotonic() + within
        while not self._idle():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, within: float) -> None:
        """Finish what is in flight (up to ``within`` seconds), then stop the background
        tasks."""
        if not await self.drain(within):
            log.warning("stopping with deliveries in flight; their leases will expire",
                        leased=sum(e.leased for e in self.endpoints.values()))
        self._closing = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: PERF203
                pass
        for task in list(self._sending):
            task.cancel()

    def _idle(self) -> bool:
        if self._done or self._recording:
            return False
        return all(e.leased == 0 and (not e.parked or e.is_open)
                   for e in self.endpoints.values())

    # -- claiming --------------------------------------------------------------------------

    def _endpoint(self, key: str) -> Endpoint:
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            endpoint = self.endpoints[key] = Endpoint(
                key=key, cap=self.settings.endpoint_concurrency,
                failures_to_open=self.settings.circuit_failures,
                probe_interval=self.settings.probe_interval)
            self._ready[key] = _Ready()
            self._senders[key] = 0
            # Read when scraped rather than set twice per delivery.
            metrics.ENDPOINT_INFLIGHT.labels(key).set_function(lambda: endpoint.in_flight)
        return endpoint

    async def submit(self, delivery_ids: Sequence[int]) -> Submitted:
        """Claim what endpoint capacity allows among ``delivery_ids`` and start sending it; park
        the rest. Returns without waiting for any POST. Raises on database errors (nothing was
        leased then)."""
        return await self._claim(list(delivery_ids), report_unclaimed=True)

    async def _claim(self, delivery_ids: list[int], *, report_unclaimed: bool) -> Submitted:
        submitted = Submitted()
        if not delivery_ids:
            return submitted
        lease = self._next_lease()
        now = time.monotonic()
        pinned: set[str] = set()
        try:
            return await self._claim_pinned(delivery_ids, lease=lease, now=now, pinned=pinned,
                                            report_unclaimed=report_unclaimed)
        finally:
            for key in pinned:
                self._pinned[key] -= 1
                if not self._pinned[key]:
                    del self._pinned[key]

    async def _claim_pinned(self, delivery_ids: list[int], *, lease: str, now: float,
                            pinned: set[str], report_unclaimed: bool) -> Submitted:
        submitted = Submitted()
        counted: dict[str, int] = {}
        try:
            # Two statements, no transaction: the candidates are read without locks, the claim
            # statement locks (SKIP LOCKED), re-checks and leases the picked ones atomically.
            async with self.pool.acquire() as conn:
                candidates = await claim_candidates(conn, delivery_ids)
                picked: list[int] = []
                picked_for: dict[str, int] = defaultdict(int)
                # (endpoint, history) → ids parked: live ones and a refire's apart
                parked: dict[tuple[str, bool], list[int]] = defaultdict(list)
                for delivery_id, url, history in candidates:
                    endpoint = self._endpoint(endpoint_key(url))
                    if endpoint.key not in pinned:
                        pinned.add(endpoint.key)
                        self._pinned[endpoint.key] += 1
                    if endpoint.capacity(now) > picked_for[endpoint.key]:
                        picked.append(delivery_id)
                        picked_for[endpoint.key] += 1
                    else:
                        parked[(endpoint.key, history)].append(delivery_id)
                # Counted before the statement: a concurrent claim (another job, a refill)
                # sees the capacity taken, so a circuit gets one probe, not one per claim.
                for key, count in picked_for.items():
                    self.endpoints[key].leased_now(count)
                    counted[key] = count
                rows = await claim_deliveries(
                    conn, picked, lease=lease, default_timeout=self.policy.default_timeout,
                    rounds=HOST_BACKLOG_FACTOR) if picked else []
                handled = {row["id"] for row in rows}
                for ids in parked.values():
                    handled.update(ids)
                if report_unclaimed and len(handled) < len(delivery_ids):
                    # Locked by another transaction right now, leased meanwhile, or due soon.
                    submitted.unclaimed = await unclaimed_soon(conn, delivery_ids, list(handled))
        except BaseException:
            for key, count in counted.items():  # nothing was leased
                self.endpoints[key].leased -= count
                self.endpoints[key].probe_skipped()
            raise
        keys = {delivery_id: endpoint_key(url) for delivery_id, url, _ in candidates}
        claimed_ids = {row["id"] for row in rows}
        for delivery_id in picked:  # locked by someone else, or leased meanwhile
            if delivery_id not in claimed_ids:
                endpoint = self.endpoints[keys[delivery_id]]
                endpoint.leased -= 1
                endpoint.probe_skipped()
        jitter = random.random()
        ready_for: dict[str, list[tuple[asyncpg.Record, str, float]]] = defaultdict(list)
        for row in rows:
            ready_for[keys[row["id"]]].append((row, lease, jitter))
        for key, ready in ready_for.items():
            self._start_sending(self.endpoints[key], ready)
        for (key, history), ids in parked.items():
            dropped = self.endpoints[key].wait(ids, limit=WAITING_LIMIT, history=history)
            if dropped:
                log.warning("too many deliveries parked for one endpoint; the sweep brings "
                            "them back", endpoint=key, dropped=dropped)
        submitted.claimed = len(rows)
        submitted.parked = sum(len(ids) for ids in parked.values())
        return submitted

    def _refill(self, endpoint: Endpoint) -> None:
        """Claim parked deliveries of ``endpoint`` as far as its capacity allows (one refill at
        a time per endpoint; it calls itself again when done)."""
        if self._closing or endpoint.key in self._refilling or not endpoint.parked:
            return
        room = endpoint.capacity(time.monotonic())
        if room <= 0:
            return
        if endpoint.leased and room < min(endpoint.cap, endpoint.parked):
            return  # claim in chunks of about the cap: fewer, larger claims
        live, history = endpoint.take_waiting(room)
        ids = live + history
        self._refilling.add(endpoint.key)

        async def refill() -> None:
            try:
                await self._claim(ids, report_unclaimed=False)
            except Exception as error:
                # Parked again; the next freed slot or maintenance tick retries.
                endpoint.wait(live, limit=WAITING_LIMIT)
                endpoint.wait(history, limit=WAITING_LIMIT, history=True)
                log.warning("could not claim parked deliveries, will retry", endpoint=endpoint.key,
                            error=str(error) or repr(error))
                await asyncio.sleep(0.5)
            finally:
                self._refilling.discard(endpoint.key)
            self._refill(endpoint)

        task = asyncio.create_task(refill())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    # -- sending ---------------------------------------------------------------------------

    def _start_sending(self, endpoint: Endpoint,
                       ready: list[tuple[asyncpg.Record, str, float]]) -> None:
        """Queue leased deliveries for ``endpoint``'s senders, starting senders up to its cap
        (the endpoint's concurrency limit: one request in flight per sender)."""
        key = endpoint.key
        queue = self._ready[key]
        queue.extend(ready)
        while self._senders[key] < endpoint.cap and queue:
            self._senders[key] += 1
            task = asyncio.create_task(self._sender(endpoint, queue))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _sender(self, endpoint: Endpoint, queue: _Ready) -> None:
        """Send ``endpoint``'s leased deliveries one after another until none waits: live ones
        first, each lane in lease order (FIFO across the endpoint's senders)."""
        try:
            while queue:
                row, lease, jitter = queue.popleft()
                try:
                    await self._send(row, endpoint, lease, jitter)
                except Exception:
                    # A bug in one delivery's bookkeeping (its outcome is already queued for
                    # the recorder) must not strand the deliveries queued behind it.
                    log.exception("delivery sender failed; continuing", endpoint=endpoint.key)
        finally:
            self._senders[endpoint.key] -= 1

    async def _send(self, row: asyncpg.Record, endpoint: Endpoint, lease: str,
                    jitter: float) -> None:
        outcome: Outcome | None = None
        try:
            if not endpoint.may_send():
                return  # released below: the circuit opened while this one waited
            endpoint.in_flight += 1
            try:
                outcome = await attempt_or_requeue(row, client=self.client, policy=self.policy,
                                                   jitter=jitter, keyring=self.keyring)
            finally:
                endpoint.in_flight -= 1
            self._count(endpoint, outcome)
        finally:
            # Its endpoint place is free once the request is over (recording is separate: the
            # next deliveries need not wait for it).
            endpoint.leased -= 1
            self._done.append(_Done(row["id"], lease, endpoint, outcome,
                                    lease_lost=bool(row["lease_lost"]),
                                    live_block_time=_live_block_time(row),
                                    history=bool(row["replay"])))
            self._done_ready.set()
            self._refill(endpoint)

    def _count(self, endpoint: Endpoint, outcome: Outcome) -> None:
        if outcome.endpoint_ok is None:
            endpoint.probe_skipped()
            return
        changed = endpoint.record(answered=outcome.endpoint_ok, now=time.monotonic(),
                                  error=outcome.error)
        if changed:
            metrics.ENDPOINT_CIRCUIT_OPEN.labels(endpoint.key).set(int(endpoint.is_open))
            if endpoint.is_open:
                log.warning("endpoint circuit open: its deliveries wait, one probe per interval",
                            endpoint=endpoint.key, failures=endpoint.consecutive_failures,
                            probe_interval=endpoint.probe_interval, error=endpoint.last_error)
            else:
                log.info("endpoint circuit closed", endpoint=endpoint.key)
            self._publish_state()

    # -- recording -------------------------------------------------------------------------

    async def _recorder(self) -> None:
        while True:
            await self._done_ready.wait()
            if len(self._done) < RECORD_BATCH // 4:
                await asyncio.sleep(RECORD_LINGER_SECONDS)
            self._done_ready.clear()
            while self._done:
                batch, self._done = self._done[:RECORD_BATCH], self._done[RECORD_BATCH:]
                self._recording += len(batch)
                try:
                    report = await self._record(batch)
                except DatabaseBroken as error:
                    self._fatal(str(error))
                    raise
                except Exception as error:
                    # The webhooks were sent; their leases expire and another attempt follows.
                    log.error("could not record delivery outcomes; they will be sent again "
                              "once their leases expire", deliveries=len(batch),
                              error=str(error) or repr(error))
                    report = None
                self._recording -= len(batch)
                if report is not None:
                    await self._run_after_commit(report)
                for endpoint in {done.endpoint.key: done.endpoint for done in batch}.values():
                    self._refill(endpoint)

    async def _record(self, batch: list[_Done]) -> BatchReport:
        report = BatchReport()
        sent = [done for done in batch if done.outcome is not None]
        report.outcomes = [done.outcome for done in sent if done.outcome is not None]
        released = [(done.delivery_id, done.lease) for done in batch if done.outcome is None]
        # A matched delivery whose earlier attempt was lost (lease expired unrecorded) may have
        # been sent: cancelling it for a reorg must still bring the event.removed.
        maybe_sent = [o.delivery_id for done in sent if (o := done.outcome) is not None
                      and (o.status == "delivered" or (o.status == "cancelled"
                                                       and done.lease_lost))]
        recorded, report.removed_created = await record_outcomes_durably(
            self.pool, report.outcomes, leases=[done.lease for done in sent],
            maybe_sent=maybe_sent, released=released, retry_seconds=self._record_retry_seconds)
        for done in batch:
            if done.outcome is None:
                done.endpoint.wait([done.delivery_id], limit=WAITING_LIMIT, history=done.history)
        by_id = {o.delivery_id: o for o in report.outcomes}
        done_by_id = {done.delivery_id: done for done in sent}
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for row in recorded:
            _observe(done_by_id[row.delivery_id], by_id[row.delivery_id], counts)
            outcome = by_id[row.delivery_id]
            if outcome.status == "delivered" and row.latency_ms is not None:
                metrics.DELIVERY_LATENCY.observe(row.latency_ms / 1000)
            elif outcome.delay is not None:
                report.retries[row.delivery_id] = row.next_attempt_epoch
        for (key, status), count in counts.items():
            _endpoint_attempts_counter(key, status).inc(count)
        return report

    async def _run_after_commit(self, report: BatchReport) -> None:
        if not report.retries and not report.removed_created:
            return
        try:
            await asyncio.to_thread(self._after_commit, report)
        except Exception:
            log.exception("after-commit work failed; the sweep re-enqueues what it missed")

    # -- maintenance -----------------------------------------------------------------------

    async def _maintenance(self) -> None:
        last_publish = 0.0
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_SECONDS)
            try:
                for endpoint in list(self.endpoints.values()):
                    self._refill(endpoint)  # probes of open circuits whose interval passed
                    metrics.ENDPOINT_WAITING.labels(endpoint.key).set(endpoint.parked)
                    if (not endpoint.is_open and not endpoint.leased and not endpoint.parked
                            and not endpoint.consecutive_failures
                            and endpoint.key not in self._refilling
                            and endpoint.key not in self._pinned):
                        self._forget(endpoint.key)
                if time.monotonic() - last_publish >= 5.0:
                    last_publish = time.monotonic()
                    self._publish_state()
            except Exception:
                log.exception("delivery maintenance failed; continuing")

    def _forget(self, key: str) -> None:
        """Drop an idle endpoint's state (bounded memory and label sets)."""
        del self.endpoints[key]
        del self._ready[key]
        del self._senders[key]
        for gauge in (metrics.ENDPOINT_INFLIGHT, metrics.ENDPOINT_CIRCUIT_OPEN,
                      metrics.ENDPOINT_WAITING):
            try:
                gauge.remove(key)
            except KeyError:
                pass

    def _publish_state(self) -> None:
        if self._publish is None:
            return
        snapshot = dict(self.endpoints)

        async def publish() -> None:
            try:
                await asyncio.to_thread(self._publish, snapshot)  # type: ignore[arg-type]
            except Exception as error:
                log.debug("could not publish endpoint state", error=str(error) or repr(error))

        task = asyncio.create_task(publish())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _guard(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            if not self._closing:
                self._fatal(f"delivery {name} task cancelled")
            raise
        except BaseException as error:
            log.exception("delivery background task crashed", task=name)
            self._fatal(f"delivery {name} task crashed: {error!r}")
            raise
        if not self._closing:
            self._fatal(f"delivery {name} task ended")

    def _fatal(self, reason: str) -> None:
        log.error("delivery engine cannot go on; the worker exits", reason=reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)


async def attempt_or_requeue(row: asyncpg.Record, *, client: WebhookClient,
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


async def record_outcomes_durably(pool: asyncpg.Pool, outcomes: Sequence[Outcome], *,
                                  leases: Sequence[str], maybe_sent: Sequence[int],
                                  released: Sequence[tuple[int, str]] = (),
                                  retry_seconds: float = RECORD_RETRY_SECONDS,
                                  ) -> tuple[list[Recorded], list[int]]:
    """Record ``outcomes`` (each under its lease), create the ``removed`` deliveries they call
    for and end the ``released`` leases, in one transaction. Transient database errors are
    retried with backoff until ``retry_seconds`` have passed (the webhooks were sent: giving up
    gets them sent again once the leases expire); an SQL error raises ``DatabaseBroken``."""
    deadline = time.monotonic() + retry_seconds
    backoff = Backoff(base=0.1, cap=5.0)
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                recorded = await record_outcomes(conn, outcomes, lease=leases)
                removed = await ensure_removed_deliveries(conn, maybe_sent)
                await release_leases(conn, released)
            return recorded, removed
        except Exception as error:
            if isinstance(error, asyncpg.PostgresError) and not is_transient(error):
                raise DatabaseBroken.from_error(error) from error
            if not is_transient(error) or time.monotonic() >= deadline:
                raise
            delay = backoff.next_delay()
            log.warning("could not record delivery outcomes, retrying",
                        deliveries=len(outcomes), error=str(error) or repr(error),
                        retry_in=round(delay, 2))
            await asyncio.sleep(delay)

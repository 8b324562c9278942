"""Per-endpoint isolation in a worker process: a concurrency cap and a circuit breaker per
endpoint (scheme, host and port of the webhook URL).

- An endpoint is the ``host:port`` of the webhook URL.
- At most ``cap`` requests to one endpoint are in flight at a time (``WORKER_ENDPOINT_CONCURRENCY``)
  and at most ``2 × cap`` of its deliveries are leased by this process; the others wait
  unclaimed in a per-endpoint waiting list (ids only) and are claimed as slots free up. So a
  slow or hanging endpoint holds a few slots of its own and delays nobody else.
- After ``failures`` consecutive failed attempts (timeouts, connection errors, 408/429/5xx) the
  endpoint's circuit opens (``WORKER_CIRCUIT_FAILURES``): its deliveries wait, unclaimed and
  without using attempts, and one probe delivery is sent per ``probe_interval`` seconds
  (``WORKER_CIRCUIT_PROBE_INTERVAL``); the probe's success closes the circuit, its failure keeps
  it open for another interval. Any 2xx, or a permanent verdict (4xx other than 408/429), counts
  as the endpoint answering.

Pure state, no I/O; the clock is passed in. :mod:`workers.dispatch` does the claiming.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

from yarl import URL

HOST_BACKLOG_FACTOR = 2


@lru_cache(maxsize=4096)  # a few actions' URLs, each parsed once rather than per claimed row
def endpoint_key(url: str | None) -> str:
    """``host:port`` of a webhook URL; ``"?"`` when it cannot be parsed (such a delivery fails
    on its own; it shares a key with nobody healthy)."""
    try:
        parsed = URL(url or "")
    except (TypeError, ValueError):
        return "?"
    if not parsed.host:
        return "?"
    return f"{parsed.host}:{parsed.port}"


class Circuit(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"  # half-open: one probe in flight


@dataclass
class Endpoint:
    """What a worker process knows of one endpoint."""

    key: str
    cap: int
    failures_to_open: int
    probe_interval: float
    in_flight: int = 0  # requests being sent
    leased: int = 0  # deliveries leased by this process (in flight or waiting for a slot)
    # Parked ids, live deliveries apart from a refire's history (``replay``): claims take live
    # ones first, so a refire parked here never holds up a live webhook to the same endpoint.
    waiting_live: deque[int] = field(default_factory=deque)
    waiting_history: deque[int] = field(default_factory=deque)
    waiting_ids: set[int] = field(default_factory=set)
    circuit: Circuit = Circuit.CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    last_error: str | None = None

    @property
    def parked(self) -> int:
        """How many ids wait, live and history."""
        return len(self.waiting_ids)

    def wait(self, delivery_ids: list[int], *, limit: int, history: bool = False) -> int:
        """Add ids to the live (or ``history``) waiting list, once each and at most ``limit``
        in all; return how many were left out (the processor's sweep brings those back)."""
        lane = self.waiting_history if history else self.waiting_live
        dropped = 0
        for delivery_id in delivery_ids:
            if delivery_id in self.waiting_ids:
                continue
            if len(self.waiting_ids) >= limit:
                dropped += 1
                continue
            lane.append(delivery_id)
            self.waiting_ids.add(delivery_id)
        return dropped

    def take_waiting(self, count: int) -> tuple[list[int], list[int]]:
        """Up to ``count`` waiting ids, live ones first: (live, history)."""
        taken: tuple[list[int], list[int]] = ([], [])
        for lane, into in ((self.waiting_live, taken[0]), (self.waiting_history, taken[1])):
            while lane and len(taken[0]) + len(taken[1]) < count:
                delivery_id = lane.popleft()
                self.waiting_ids.discard(delivery_id)
                into.append(delivery_id)
        return taken

    def capacity(self, now: float) -> int:
        """How many more deliveries this process may lease for the endpoint right now. An open
        circuit whose interval has passed allows one (the probe)."""
        if self.circuit is Circuit.OPEN:
            return 1 if now - self.opened_at >= self.probe_interval and self.leased == 0 else 0
        if self.circuit is Circuit.PROBING:
            return 0
        return max(0, self.cap * HOST_BACKLOG_FACTOR - self.leased)

    def leased_now(self, count: int) -> None:
        self.leased += count
        if count and self.circuit is Circuit.OPEN:
            self.circuit = Circuit.PROBING

    def probe_skipped(self) -> None:
        """The probe ended without reaching the endpoint (cancelled, refused, released): the
        next delivery may probe at once."""
        if self.circuit is Circuit.PROBING:
            self.circuit = Circuit.OPEN

    def may_send(self) -> bool:
        """Whether a leased delivery may be sent now (``False``: the circuit opened while it
        waited for a slot; it is released, not attempted)."""
        return self.circuit is not Circuit.OPEN

    def record(self, *, answered: bool, now: float, error: str | None = None) -> bool:
        """Count one attempt's result; return ``True`` when this changed the circuit."""
        before = self.circuit
        if answered:
            self.consecutive_failures = 0
            self.circuit = Circuit.CLOSED
            self.last_error = None
        else:
            self.consecutive_failures += 1
            self.last_error = error
            if self.circuit is Circuit.PROBING or (
                    self.failures_to_open and self.circuit is Circuit.CLOSED
                    and self.consecutive_failures >= self.failures_to_open):
                self.circuit = Circuit.OPEN
                self.opened_at = now
        return self.circuit is not before

    @property
    def is_open(self) -> bool:
        return self.circuit is not Circuit.CLOSED

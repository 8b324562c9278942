"""RQ job functions (``core.queue.JOB_FUNCTION`` names :func:`deliver_batch`)."""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from core.queue import delivery_queue
from workers import runtime

# A history job (a refire's, from ``core.queue.REPLAY_QUEUE_NAME``) holds the worker until the
# process's deliveries are sent, at most this long: the dispatcher then never holds more than
# about one history chunk, so the refire does not pile up in one process's waiting lists.
HISTORY_DRAIN_SECONDS = 60.0
# ... but it lets go as soon as a live job is queued (checked this often): the worker takes the
# live job next (RQ serves the live queue first) while the history chunk goes on being sent in
# the background. Holding the worker for the whole chunk made live webhooks wait behind it.
LIVE_CHECK_SECONDS = 0.02


def deliver_batch(delivery_ids: list[int], *, lock_retries: int = 0,
                  history: bool = False) -> dict[str, int]:
    """Hand each of ``delivery_ids`` that is open and due to the process's dispatcher (leased
    and sent in the background, or parked behind its endpoint's cap or open circuit); skip the
    others. Returns without waiting for any POST, except for ``history`` jobs (see
    :data:`HISTORY_DRAIN_SECONDS`).

    Safe to run twice or concurrently for the same ids (rows are leased per attempt; final,
    leased and not-yet-due rows are skipped). Retries are scheduled as new jobs, not via RQ's
    retry, since Postgres holds the schedule. Raises on database errors while claiming (the job
    then fails in RQ and the rows stay open for the processor's sweep). Returns how many were
    claimed and parked."""
    current = runtime.current()
    counts = current.deliver(delivery_ids, lock_retries=lock_retries)
    if history:
        drain_unless_live_work(current)
    return counts


def drain_unless_live_work(current: runtime.Runtime) -> None:
    """Wait until the process's deliveries are sent (at most :data:`HISTORY_DRAIN_SECONDS`), or
    until a live job is waiting in the queue, whichever comes first."""
    live = delivery_queue(current.redis)
    deadline = time.monotonic() + HISTORY_DRAIN_SECONDS
    while time.monotonic() < deadline:
        if current.drain(LIVE_CHECK_SECONDS):
            return
        try:
            if live.count:
                return
        except RedisError:
            pass  # Redis is down: no live job can arrive meanwhile either; go on draining

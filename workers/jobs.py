"""RQ job functions (``core.queue.JOB_FUNCTION`` names :func:`deliver_batch`)."""

from __future__ import annotations

from workers import runtime

# A history job (a refire's, from ``core.queue.REPLAY_QUEUE_NAME``) waits until the process's
# deliveries are sent before the worker takes its next job, at most this long: the dispatcher
# never holds more than one history chunk, so a live job that arrives meanwhile waits for that
# chunk only instead of queueing behind a whole refire in the endpoint's waiting list.
HISTORY_DRAIN_SECONDS = 60.0


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
        current.drain(HISTORY_DRAIN_SECONDS)
    return counts

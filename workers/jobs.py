"""RQ job functions (``core.queue.JOB_FUNCTION`` names :func:`deliver_batch`)."""

from __future__ import annotations

from workers import runtime


def deliver_batch(delivery_ids: list[int], *, lock_retries: int = 0) -> dict[str, int]:
    """Hand each of ``delivery_ids`` that is open and due to the process's dispatcher (leased
    and sent in the background, or parked behind its endpoint's cap or open circuit); skip the
    others. Returns without waiting for any POST.

    Safe to run twice or concurrently for the same ids (rows are leased per attempt; final,
    leased and not-yet-due rows are skipped). Retries are scheduled as new jobs, not via RQ's
    retry, since Postgres holds the schedule. Raises on database errors while claiming (the job
    then fails in RQ and the rows stay open for the processor's sweep). Returns how many were
    claimed and parked."""
    return runtime.current().deliver(delivery_ids, lock_retries=lock_retries)

"""RQ job functions (``core.queue.JOB_FUNCTION`` names :func:`deliver_batch`)."""

from __future__ import annotations

from workers import runtime


def deliver_batch(delivery_ids: list[int], *, lock_retries: int = 0) -> dict[str, int]:
    """Deliver each of ``delivery_ids`` once if it is open and due; skip it otherwise.

    Safe to run twice or concurrently for the same ids (rows are locked per attempt; final and
    not-yet-due rows are skipped). Retries are scheduled as new jobs, not via RQ's retry, since
    Postgres holds the schedule. Raises on database errors (the job then fails in RQ and the
    rows stay open for the processor's sweep). Returns counts by outcome."""
    return runtime.current().deliver(delivery_ids, lock_retries=lock_retries)

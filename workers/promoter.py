"""Moves due scheduled jobs (webhook retries, job retries, lock rechecks) into the queue.

RQ's own scheduler is a singleton guarded by a Redis lock with a 61 s TTL, and a worker that
fails to take it tries again only every 120 s: after a ``kill -9`` of the worker that held it,
every due retry waited up to two minutes. Instead every worker process runs this small promoter.
No lock is needed: ``ZREM`` on the scheduled registry is the claim, so exactly one promoter
enqueues each due job. A promoter that dies between the claim and the enqueue loses that job;
its rows are still ``queued`` in Postgres and the processor's lost-job sweep re-enqueues them.
"""

from __future__ import annotations

import threading

import redis
import structlog
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.utils import current_timestamp

log = structlog.get_logger(__name__)

PROMOTE_INTERVAL_SECONDS = 0.25


def promote_due_jobs(queue: Queue) -> int:
    """Enqueue every scheduled job of ``queue`` that is due now; return how many this call
    enqueued (jobs claimed by another promoter are theirs)."""
    registry = ScheduledJobRegistry(queue=queue)
    promoted = 0
    for job_id in registry.get_jobs_to_schedule(current_timestamp()):
        if not queue.connection.zrem(registry.key, job_id):
            continue  # another promoter claimed it
        job = Job.fetch(job_id, connection=queue.connection) if Job.exists(
            job_id, connection=queue.connection) else None
        if job is not None:
            queue.enqueue_job(job)
            promoted += 1
    return promoted


class Promoter:
    """A daemon thread calling :func:`promote_due_jobs` every ``interval`` seconds."""

    def __init__(self, queue: Queue, *, interval: float = PROMOTE_INTERVAL_SECONDS) -> None:
        self.queue = queue
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blockhook-promoter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                promote_due_jobs(self.queue)
            except redis.RedisError as error:
                # Redis down: nothing to promote until it is back; keep trying.
                log.debug("promoter cannot reach Redis", error=str(error))

"""Moves due scheduled jobs (webhook retries, job retries, lock rechecks) into the queue.

RQ's own scheduler is a singleton guarded by a Redis lock with a 61 s TTL, and a worker that
fails to take it tries again only every 120 s: after a ``kill -9`` of the worker that held it,
every due retry waited up to two minutes. Instead every worker process runs this small promoter.
No lock is needed: ``ZREM`` on the scheduled registry is the claim, so exactly one promoter
enqueues each due job. A promoter that dies between the claim and the enqueue loses that job;
its rows are still ``queued`` in Postgres and the processor's lost-job sweep re-enqueues them.
Errors are survived: Redis being down quietly, anything else logged (:mod:`workers.loops`).
"""

from __future__ import annotations

from collections.abc import Callable

import redis
import structlog
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.utils import current_timestamp

from workers.loops import BackgroundLoop

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
        try:
            job = Job.fetch(job_id, connection=queue.connection)
        except NoSuchJobError:
            continue  # deleted meanwhile (expired, or removed by hand): nothing to run
        queue.enqueue_job(job)
        promoted += 1
    return promoted


class Promoter(BackgroundLoop):
    """A daemon thread calling :func:`promote_due_jobs` every ``interval`` seconds."""

    name = "promoter"

    def __init__(self, queue: Queue, *, interval: float = PROMOTE_INTERVAL_SECONDS,
                 on_death: Callable[[str], None] | None = None) -> None:
        super().__init__(interval=interval, on_death=on_death)
        self.queue = queue

    def step(self) -> None:
        try:
            promote_due_jobs(self.queue)
        except redis.RedisError as error:
            # Redis down: nothing to promote until it is back; keep trying.
            log.debug("promoter cannot reach Redis", error=str(error))

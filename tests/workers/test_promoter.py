"""The retry promoter: due scheduled jobs reach the queue once, whichever worker promotes them,
with no singleton lock that a killed worker could leave behind."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import redis

from core.queue import JOB_FUNCTION, delivery_queue
from workers.promoter import promote_due_jobs


def _schedule(queue, ids: list[int], when: datetime) -> str:
    job = queue.create_job(JOB_FUNCTION, args=(ids,), result_ttl=0)
    queue.schedule_job(job, when)
    return job.id


def test_due_jobs_are_enqueued_once_by_concurrent_promoters(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = delivery_queue(client)
    past = datetime.now(UTC) - timedelta(seconds=2)
    due = {_schedule(queue, [n], past) for n in range(200)}
    later = _schedule(queue, [999], datetime.now(UTC) + timedelta(hours=1))

    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(promote_due_jobs(delivery_queue(
        redis.Redis.from_url(redis_url))))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(counts) == len(due)
    queued = queue.get_job_ids()
    assert sorted(queued) == sorted(due) and len(queued) == len(set(queued))
    assert later not in queued and promote_due_jobs(queue) == 0
    client.close()


def test_a_stale_rq_scheduler_lock_does_not_hold_retries_back(redis_url: str) -> None:
    """What a kill -9'd worker leaves behind: RQ's scheduler lock naming a dead scheduler."""
    client = redis.Redis.from_url(redis_url)
    queue = delivery_queue(client)
    client.set(f"rq:scheduler-lock:{queue.name}", "dead-scheduler", ex=60)
    job_id = _schedule(queue, [1], datetime.now(UTC) - timedelta(seconds=1))
    assert promote_due_jobs(queue) == 1
    assert queue.get_job_ids() == [job_id]
    client.close()

"""Outcomes against a real misbehaving endpoint: retries on schedule, permanent failures,
timeouts, Retry-After, exhaustion, redirects, and duplicates of the same job."""

from __future__ import annotations

import redis
from prometheus_client import REGISTRY

from tests.support.receiver import Receiver, Step
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil, status_is


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_503_twice_then_200_is_delivered_on_the_third_attempt_on_schedule(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_retry_schedule="1,2")
    receiver.script(Step(status=503, times=2, body="busy"))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    retries_before = _metric("blockhook_workers_retries_scheduled_total")

    rows.enqueue(redis_client, [delivery_id])
    work_until(lambda: rows.delivery(plain_db_url, delivery_id)["attempts"] >= 1)
    after_first = rows.delivery(plain_db_url, delivery_id)
    assert (after_first["status"], after_first["last_status_code"]) == ("queued", 503)
    assert after_first["last_error"] == "HTTP 503: busy"
    work_until(status_is(plain_db_url, delivery_id, "delivered", "failed"), timeout=30)

    seen = receiver.received()
    assert [r.answered for r in seen] == [503, 503, 200]
    assert {r.webhook_id for r in seen} == {f"dlv_{delivery_id}"}
    assert all(r.verified for r in seen)
    assert len({r.timestamp for r in seen}) >= 2  # timestamps are per attempt
    gaps = [b.received_at - a.received_at for a, b in zip(seen, seen[1:], strict=False)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps  # never earlier than the schedule
    assert gaps[0] < 1.2 + 2.5 and gaps[1] < 2.4 + 2.5, gaps  # jitter ≤ 20 % + scheduler tick
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 3, 200)
    assert row["last_error"] is None
    assert _metric("blockhook_workers_retries_scheduled_total") - retries_before == 2


def test_400_fails_after_one_attempt(plain_db_url: str, redis_client: redis.Redis,
                                     receiver: Receiver, secret: str,
                                     install_runtime: RuntimeFactory,
                                     work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    receiver.script(Step(status=400, body="bad payload " + "x" * 1000))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    failed_before = _metric("blockhook_workers_failed_total")
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "failed", "delivered"))
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 1, 400)
    assert row["last_error"].startswith("HTTP 400: bad payload xxx")
    assert len(row["last_error"]) < 260  # an excerpt, not the body
    assert len(receiver.received()) == 1
    assert _metric("blockhook_workers_failed_total") - failed_before == 1


def test_endpoint_that_never_answers_times_out_and_is_retried(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_retry_schedule="0.5")
    receiver.script(Step(hang=30))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret,
                                       extra_config={"timeout": 0.5})
    rows.enqueue(redis_client, [delivery_id])
    work_until(lambda: rows.delivery(plain_db_url, delivery_id)["attempts"] >= 1)
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["last_status_code"]) == ("queued", None)
    assert row["last_error"] == "timed out after 0.5 s"
    work_until(status_is(plain_db_url, delivery_id, "delivered", "failed"))
    assert rows.delivery(plain_db_url, delivery_id)["attempts"] == 2
    assert [r.webhook_id for r in receiver.received()] == [f"dlv_{delivery_id}"] * 2


def test_429_retry_after_is_honoured(plain_db_url: str, redis_client: redis.Redis,
                                     receiver: Receiver, secret: str,
                                     install_runtime: RuntimeFactory,
                                     work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_retry_schedule="0.1")
    receiver.script(Step(status=429, retry_after="3"))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "delivered", "failed"))
    first, second = receiver.received()
    assert first.answered == 429 and second.answered == 200
    assert second.received_at - first.received_at >= 3.0
    assert rows.delivery(plain_db_url, delivery_id)["attempts"] == 2


def test_retryable_failures_end_failed_after_max_attempts_with_last_error(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_retry_schedule="0.2", webhook_max_attempts=3)
    receiver.script(Step(status=500, times=10, body="boom"))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "failed", "delivered"))
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 3, 500)
    assert row["last_error"] == "gave up after 3 attempts: HTTP 500: boom"
    assert len(receiver.received()) == 3


def test_redirects_are_not_followed(plain_db_url: str, redis_client: redis.Redis,
                                    receiver: Receiver, secret: str,
                                    install_runtime: RuntimeFactory,
                                    work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    receiver.script(Step(status=307))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "failed", "delivered"))
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["last_status_code"]) == ("failed", 307)
    assert len(receiver.received()) == 1


def test_connection_refused_is_retried(plain_db_url: str, redis_client: redis.Redis,
                                       install_runtime: RuntimeFactory,
                                       work_until: WorkUntil) -> None:
    from tests.support.ports import free_port

    install_runtime(plain_db_url)
    [delivery_id] = rows.webhook_setup(plain_db_url,
                                       hook_url=f"http://127.0.0.1:{free_port()}/hook")
    rows.enqueue(redis_client, [delivery_id])
    work_until(lambda: rows.delivery(plain_db_url, delivery_id)["attempts"] >= 1)
    row = rows.delivery(plain_db_url, delivery_id)
    assert row["status"] == "queued"
    assert row["last_error"].startswith("connection error: cannot connect to 127.0.0.1:")


def test_duplicate_and_early_jobs_send_nothing_twice(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_retry_schedule="30")
    receiver.script(Step(status=503))
    ids = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret, count=3)
    rows.enqueue(redis_client, ids)
    rows.enqueue(redis_client, ids)  # a duplicate job, as after a processor sweep
    work_until(lambda: all(rows.delivery(plain_db_url, i)["attempts"] >= 1 for i in ids))
    rows.enqueue(redis_client, ids)  # an early job: the retry is 30 s away
    work_until(lambda: True)
    seen = receiver.received()
    assert sorted(r.webhook_id or "" for r in seen) == sorted(f"dlv_{i}" for i in ids)
    statuses = [(rows.delivery(plain_db_url, i)["status"], rows.delivery(plain_db_url, i)["attempts"])
                for i in ids]
    assert sorted(statuses) == [("delivered", 1), ("delivered", 1), ("queued", 1)]

"""The worker as a real process: kill -9 mid-delivery, SIGTERM, several workers at once,
secrets kept out of logs, one-line configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.support.receiver import Receiver, Step
from tests.workers import rows
from tests.workers.process import ROOT, WorkerProcess


@pytest.fixture
def spawn(plain_db_url: str, redis_url: str) -> Iterator[type[WorkerProcess]]:
    started: list[WorkerProcess] = []

    class Spawned(WorkerProcess):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(db_url=plain_db_url, redis_url=redis_url, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Spawned
    for worker in started:
        worker.close()


def _wait(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_worker_killed_mid_delivery_is_retried_and_delivers_with_the_same_webhook_id(
        plain_db_url: str, redis_url: str, receiver: Receiver, secret: str,
        spawn: type[WorkerProcess]) -> None:
    receiver.script(Step(status=200, hang=60))  # the first request never gets an answer
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    client = redis.Redis.from_url(redis_url)
    rows.enqueue(client, [delivery_id])
    first = spawn()
    receiver.wait_for(1, timeout=30)
    first.kill()
    # No lock outlives the worker (none is held during a POST at all), and neither does its
    # lease: its holder lock died with its session, so the row is claimable at once.
    with psycopg.connect(plain_db_url, autocommit=True) as conn:
        status, attempts, leased_by = conn.execute(
            "SELECT status, attempts, leased_by FROM deliveries WHERE id = %s FOR UPDATE NOWAIT",
            (delivery_id,)).fetchone()  # type: ignore[misc]
        assert (status, attempts) == ("queued", 0) and leased_by is not None
    # The job died with the worker; the processor's sweep re-enqueues stale queued rows.
    rows.enqueue(client, [delivery_id])
    second = spawn(burst=True)
    assert second.wait(60) == 0, second.output
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["attempts"]) == ("delivered", 1)
    # Without an encryption key: signed as before, the secret unencrypted, one warning line.
    assert second.output.count("BLOCKHOOK_ENCRYPTION_KEY is not set") == 1
    seen = receiver.received()
    assert [r.webhook_id for r in seen] == [f"dlv_{delivery_id}"] * 2
    assert all(r.verified for r in seen)
    client.close()


def test_sigterm_finishes_the_current_job_and_exits_0(
        plain_db_url: str, redis_url: str, receiver: Receiver, secret: str,
        spawn: type[WorkerProcess]) -> None:
    receiver.script(Step(status=200, hang=2))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    client = redis.Redis.from_url(redis_url)
    rows.enqueue(client, [delivery_id])
    worker = spawn()
    receiver.wait_for(1, timeout=30)
    worker.terminate()
    assert worker.wait(30) == 0, worker.output
    assert rows.delivery(plain_db_url, delivery_id)["status"] == "delivered"
    _wait(lambda: not worker.group_alive(), timeout=10)  # the scheduler child is gone too
    idle = spawn()
    _wait(lambda: "worker starting" in idle.output, timeout=30)
    time.sleep(0.5)
    idle.terminate()
    assert idle.wait(30) == 0, idle.output
    client.close()


def test_two_workers_with_duplicate_jobs_send_each_delivery_once(
        plain_db_url: str, redis_url: str, secret: str, spawn: type[WorkerProcess]) -> None:
    with Receiver(secret=secret) as receiver:
        ids = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret, count=300)
        client = redis.Redis.from_url(redis_url)
        for _ in range(3):  # every delivery in three jobs of different batch boundaries
            rows.enqueue(client, ids)
            rows.enqueue(client, ids[7:] + ids[:7])
        workers = [spawn(burst=True, env={"WORKER_BATCH_SIZE": "20"}) for _ in range(2)]
        for worker in workers:
            assert worker.wait(90) == 0, worker.output
        seen = receiver.received()
        assert sorted(r.webhook_id or "" for r in seen) == sorted(f"dlv_{i}" for i in ids)
        assert {r["status"] for r in rows.deliveries(plain_db_url)} == {"delivered"}
        client.close()


def test_secrets_never_reach_logs_or_last_error(
        plain_db_url: str, redis_url: str, secret: str, spawn: type[WorkerProcess]) -> None:
    token = "Bearer tok_" + os.urandom(12).hex()
    key_part = secret.removeprefix("whsec_")
    password = "pw" + os.urandom(8).hex()
    with Receiver(secret=secret) as receiver:
        # An endpoint that echoes what it got: its body becomes last_error's excerpt.
        receiver.script(Step(status=400, body=f"bad request, auth was {token}, secret {secret}"),
                        Step(status=500, body=f"echo {token}"))
        config = {"headers": {"Authorization": token}}
        ids = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret, count=3,
                                 extra_config=config)
        with rows.connect(plain_db_url) as conn:
            trigger_id = rows.insert_trigger(conn, name="bad-secret")
            # A malformed secret is refused as it is written, without echoing it.
            with pytest.raises(psycopg.errors.CheckViolation) as refused:
                rows.insert_action(conn, trigger_id, {
                    "url": f"http://user:{key_part}@127.0.0.1:1/hook?token={key_part}",
                    "secret": "whsec_!!" + key_part, "headers": {"Authorization": token}})
            assert "whsec_" in str(refused.value) and key_part not in str(refused.value)
            # Credentials in the URL: with an Authorization header too (aiohttp refuses to
            # build the request), and alone for an unreachable endpoint (connection errors).
            for n, headers in enumerate(({"Authorization": token}, {})):
                trigger_id = rows.insert_trigger(conn, name=f"creds-in-url-{n}")
                action_id = rows.insert_action(conn, trigger_id, {
                    "url": f"http://user:{password}@127.0.0.1:1/hook?token={password}",
                    "secret": secret, "headers": headers})
                ids.append(rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                                event_id=rows.transfer_event(conn, log_index=90 + n)))
        client = redis.Redis.from_url(redis_url)
        rows.enqueue(client, ids)
        worker = spawn(burst=True, env={"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json",
                                        "WEBHOOK_RETRY_SCHEDULE": "0"})
        assert worker.wait(60) == 0, worker.output
        output = worker.output
        assert "delivery rejected" in output or "delivery attempt failed" in output
        recorded = rows.deliveries(plain_db_url)
        assert {r["status"] for r in recorded} >= {"failed"}
        assert (recorded[-2]["status"], recorded[-2]["last_error"]) == (
            "failed", "request cannot be sent: Cannot combine AUTHORIZATION header with AUTH "
                      "argument or credentials encoded in URL")
        assert recorded[-1]["last_error"].startswith("connection error: cannot connect to "
                                                     "127.0.0.1:1")
        for text in [output, *(r["last_error"] or "" for r in recorded)]:
            assert key_part not in text
            assert password not in text
            assert token.split()[1] not in text
        client.close()


def test_unreachable_database_exits_1_with_one_line(redis_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
           "REDIS_URL": redis_url}
    result = subprocess.run([sys.executable, "-m", "workers", "--burst"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("workers: cannot connect to the database")


def test_invalid_settings_exit_2_with_one_line(plain_db_url: str, redis_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": plain_db_url, "REDIS_URL": redis_url,
           "WEBHOOK_RETRY_SCHEDULE": "soon"}
    result = subprocess.run([sys.executable, "-m", "workers", "--burst"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "WEBHOOK_RETRY_SCHEDULE" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_metrics_are_served(plain_db_url: str, redis_url: str, receiver: Receiver, secret: str,
                            spawn: type[WorkerProcess]) -> None:
    import httpx

    from tests.support.ports import free_port

    port = free_port()
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    client = redis.Redis.from_url(redis_url)
    rows.enqueue(client, [delivery_id])
    spawn(env={"METRICS_PORT": str(port)})
    _wait(lambda: rows.delivery(plain_db_url, delivery_id)["status"] == "delivered")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in ('blockhook_workers_attempts_total{outcome="delivered"} 1.0',
                 "blockhook_workers_delivery_latency_seconds_count 1.0",
                 "blockhook_workers_endpoint_response_seconds_count 1.0",
                 "blockhook_workers_retries_scheduled_total 0.0",
                 "blockhook_workers_failed_total 0.0"):
        assert line in text, line
    client.close()


def test_schema_error_stops_the_worker_with_one_line_naming_the_query(
        plain_db_url: str, redis_url: str, receiver: Receiver, secret: str,
        spawn: type[WorkerProcess]) -> None:
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    with psycopg.connect(plain_db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE deliveries RENAME COLUMN next_attempt_at TO next_attempt_gone")
    try:
        client = redis.Redis.from_url(redis_url)
        rows.enqueue(client, [delivery_id])
        client.close()
        worker = spawn()
        assert worker.wait(30) == 1, worker.output
        [line] = [line for line in worker.output.splitlines() if line.startswith("workers:")]
        assert "database error 42703" in line and "next_attempt_at" in line and "query: " in line
        assert receiver.count() == 0
    finally:
        with psycopg.connect(plain_db_url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE deliveries RENAME COLUMN next_attempt_gone TO next_attempt_at")

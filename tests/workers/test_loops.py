"""Background loops of a worker process survive their errors, and a loop that dies anyway stops
the process with a non-zero exit (workers.loops)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from core.queue import JOB_FUNCTION, delivery_queue
from workers import promoter as promoter_module
from workers import sealer as sealer_module
from workers.promoter import Promoter, promote_due_jobs
from workers.sealer import Sealer


def _wait(check: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def _schedule_due(queue: Any, ids: list[int]) -> str:
    job = queue.create_job(JOB_FUNCTION, args=(ids,), result_ttl=0)
    queue.schedule_job(job, datetime.now(UTC) - timedelta(seconds=1))
    return str(job.id)


def test_promoter_survives_an_unexpected_error_and_keeps_promoting(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = delivery_queue(client)
    calls = {"n": 0}

    def broken_once(q: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a job vanished between two reads")
        return promote_due_jobs(q)

    monkeypatch.setattr(promoter_module, "promote_due_jobs", broken_once)
    deaths: list[str] = []
    loop = Promoter(queue, interval=0.02, on_death=deaths.append)
    loop.start()
    try:
        job_id = _schedule_due(queue, [1])
        assert _wait(lambda: queue.get_job_ids() == [job_id])
        assert loop.is_alive() and deaths == []
    finally:
        loop.stop()
    assert deaths == []  # a requested stop is not a death
    client.close()


def test_promoter_skips_a_scheduled_job_whose_data_is_gone(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    queue = delivery_queue(client)
    ghost = _schedule_due(queue, [1])
    client.delete(f"rq:job:{ghost}")  # expired or deleted after it was scheduled
    real = _schedule_due(queue, [2])
    assert promote_due_jobs(queue) == 1
    assert queue.get_job_ids() == [real]
    client.close()


def test_a_loop_that_dies_reports_its_death(redis_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_url)

    def fatal(_q: Any) -> int:
        raise SystemExit("killed")

    monkeypatch.setattr(promoter_module, "promote_due_jobs", fatal)
    died = threading.Event()
    deaths: list[str] = []
    loop = Promoter(delivery_queue(client), interval=0.01,
                    on_death=lambda name: (deaths.append(name), died.set()))
    loop.start()
    assert died.wait(5)
    assert deaths == ["promoter"] and not _wait(loop.is_alive, within=0.5)
    client.close()


def test_sealer_survives_an_unexpected_error(plain_db_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = sealer_module.seal_once

    def broken_once(conn: Any, keyring: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug hit by one row")
        return real(conn, keyring)

    monkeypatch.setattr(sealer_module, "seal_once", broken_once)
    deaths: list[str] = []
    loop = Sealer(plain_db_url, None, interval=0.1, on_death=deaths.append)
    loop.start()
    try:
        assert _wait(lambda: calls["n"] >= 3)
        assert loop.is_alive() and deaths == []
    finally:
        loop.stop()


def test_the_worker_exits_1_when_a_background_loop_dies(
        plain_db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m workers``'s main, in-process (RQ's signal handlers need the main thread):
    the promoter thread dies a second after start; the worker stops and exits 1."""
    from workers import __main__ as worker_main
    from workers import runtime as worker_runtime

    def die_soon(self: Promoter) -> None:
        time.sleep(1.0)
        raise SystemExit("killed")

    monkeypatch.setattr(Promoter, "serve", die_soon)
    for name, value in {"DATABASE_URL": plain_db_url, "REDIS_URL": redis_url,
                        "METRICS_PORT": "0", "WEBHOOK_ALLOW_PRIVATE": "true"}.items():
        monkeypatch.setenv(name, value)
    try:
        started = time.monotonic()
        assert worker_main.main([]) == 1
        assert time.monotonic() - started < 20
    finally:
        worker_runtime.configure(None)  # type: ignore[arg-type]
    assert "workers: background loop died: promoter" in capsys.readouterr().err


def test_delivery_engine_tasks_survive_errors_and_report_their_death(
        plain_db_url: str, redis_url: str) -> None:
    """The dispatcher's maintenance task logs a failing tick and runs the next one; its recorder
    task, killed, reports the death (the worker then exits 1)."""
    from tests.workers.conftest import make_settings
    from workers.runtime import Runtime

    fatal: list[str] = []
    runtime = Runtime.start(make_settings(plain_db_url, redis_url), on_fatal=fatal.append)
    try:
        dispatcher = runtime.dispatcher
        calls = {"n": 0}

        def broken_refill(endpoint: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("a bug in one tick")

        async def add_endpoint() -> None:
            dispatcher._endpoint("hooks.example:443").consecutive_failures = 1  # kept
            dispatcher._refill = broken_refill  # type: ignore[method-assign]

        runtime._run(add_endpoint())
        assert _wait(lambda: calls["n"] >= 2, within=5)
        assert fatal == []
        recorder = dispatcher._background[0]
        runtime.loop.call_soon_threadsafe(recorder.cancel)
        assert _wait(lambda: fatal == ["delivery recorder task cancelled"], within=5)
    finally:
        runtime.close(timeout=5)


def test_a_sender_goes_on_when_one_deliverys_bookkeeping_raises(
        plain_db_url: str, redis_url: str) -> None:
    """One endpoint, one sender (cap 1, so both deliveries are leased at once and nothing is
    parked to start another sender later): a bug in the bookkeeping after the first POST is
    logged, and the delivery queued behind it on that sender is still sent and recorded."""
    from tests.support.receiver import Receiver
    from tests.workers import rows
    from tests.workers.conftest import make_settings
    from workers.runtime import Runtime

    secret = rows.new_secret()
    with Receiver(secret=secret) as receiver:
        ids = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret, count=2)
        runtime = Runtime.start(make_settings(plain_db_url, redis_url,
                                              worker_endpoint_concurrency=1))
        try:
            dispatcher = runtime.dispatcher
            count = dispatcher._count
            calls = {"n": 0}

            def count_with_a_bug(endpoint: Any, outcome: Any) -> None:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("a bug in one delivery's bookkeeping")
                count(endpoint, outcome)

            dispatcher._count = count_with_a_bug  # type: ignore[method-assign]
            runtime.deliver(ids)
            assert _wait(lambda: all(rows.delivery(plain_db_url, i)["status"] == "delivered"
                                     for i in ids), within=10), rows.deliveries(plain_db_url)
            assert receiver.count() == 2
            assert calls["n"] == 2
        finally:
            runtime.close(timeout=5)

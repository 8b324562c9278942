"""Fixtures of the worker tests: settings, an installed delivery runtime, an in-process RQ
worker loop, and a signed-webhook receiver in its own process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from rq import SimpleWorker

from core.queue import delivery_queue
from core.settings import WorkerSettings
from tests.support.receiver import Receiver
from tests.workers import rows
from workers import runtime as worker_runtime
from workers.promoter import promote_due_jobs
from workers.runtime import Runtime

SHORT_SCHEDULE = "0.5,1"


def make_settings(db_url: str, redis_url: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "database_url": db_url, "redis_url": redis_url, "webhook_timeout": 5.0,
        "webhook_max_attempts": 4, "webhook_retry_schedule": SHORT_SCHEDULE,
        "webhook_allow_private": True, "metrics_port": 0, **overrides}
    return WorkerSettings(**values)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def secret() -> str:
    return rows.new_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    with Receiver(secret=secret) as running:
        yield running


RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
def install_runtime(redis_url: str) -> Iterator[RuntimeFactory]:
    """``install_runtime(db_url, **settings)`` builds and installs the process's runtime."""
    installed: list[Runtime] = []

    def install(db_url: str, **overrides: Any) -> Runtime:
        for old in installed:
            old.close()
        installed.clear()
        built = Runtime.start(make_settings(db_url, redis_url, **overrides))
        installed.append(built)
        worker_runtime.install(built)
        return built

    yield install
    worker_runtime.install(None)
    for built in installed:
        built.close()


WorkUntil = Callable[..., None]


@pytest.fixture
def work_until(redis_client: redis.Redis) -> WorkUntil:
    """Run RQ ``SimpleWorker`` bursts, promoting due retries before each (as
    ``python -m workers`` does continuously), until ``done()`` holds: the in-process equivalent
    of a worker that keeps running while retries come due."""

    def work(done: Callable[[], bool], *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        queue = delivery_queue(redis_client)
        while True:
            promote_due_jobs(queue)
            SimpleWorker([queue], connection=redis_client).work(burst=True)
            _drain_installed()
            if done():
                return
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached by the worker")
            time.sleep(0.05)

    return work


def _drain_installed() -> None:
    """Jobs hand deliveries to the runtime's background loop: wait for what they started."""
    installed = worker_runtime.installed()
    if installed is not None:
        installed.drain(timeout=30)


def status_is(db_url: str, delivery_id: int, *statuses: str) -> Callable[[], bool]:
    return lambda: rows.delivery(db_url, delivery_id)["status"] in statuses

"""End-to-end harness: a devnet with real contracts, a real signed-webhook receiver, and the real
services as subprocesses sharing one environment.

``make_pipeline(database_url=…, redis_url=…, **env)`` builds a ``Pipeline`` (chain, store,
receiver, supervisor); ``pipeline`` is the common case on the session's plain database and the
test Redis db index. On a failed test the services' state and log tails are printed (pytest
shows them under "Captured stdout teardown"); full logs stay in the test's ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from rq import Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from core.queue import delivery_queue
from tests.e2e.chain import Chain
from tests.e2e.pipeline import CHAIN_ID, SECRET, Store
from tests.e2e.receiver import Receiver
from tests.e2e.supervisor import Service, Supervisor, child_env
from tests.support.anvil import Anvil

# Short intervals keep every scenario to seconds; retries are fast but keep the real schedule code.
FAST_ENV = {
    "CHAIN_ID": str(CHAIN_ID),
    "START_BLOCK": "0",
    "CONFIRMATIONS": "0",
    "POLL_INTERVAL": "0.2",
    "REORG_WINDOW": "64",
    "RPC_TIMEOUT": "5",
    "PROCESSOR_SWEEP_INTERVAL": "0.5",
    "WEBHOOK_TIMEOUT": "3",
    "WEBHOOK_MAX_ATTEMPTS": "6",
    "WEBHOOK_RETRY_SCHEDULE": "0.5,1,1,1,1",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    # The e2e receiver serves every scenario's "endpoints" as paths of one host:port, while the
    # circuit breaker is per host:port: a path failing on purpose must not pause its neighbours
    # here (tests/workers/test_isolation.py covers the breaker).
    "WORKER_CIRCUIT_FAILURES": "0",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "METRICS_PORT": "0",
}


@dataclass
class Pipeline:
    chain: Chain
    store: Store
    receiver: Receiver
    services: Supervisor

    def start(self, *, ingest: int = 1, processor: int = 1, workers: int = 1) -> None:
        """Start the usual set: ``ingest``, ``processor``, ``workers`` (suffixed when several)."""
        for module, count in (("ingest", ingest), ("processor", processor), ("workers", workers)):
            for n in range(count):
                self.services.add(module if count == 1 else f"{module}-{n + 1}", module)

    def service(self, name: str) -> Service:
        return self.services[name]


def describe_queue(redis_url: str) -> str:
    """The RQ side of the pipeline, for failure messages: what is waiting, scheduled, running or
    failed, and which workers (by pid) are registered on the queue."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        queue = delivery_queue(client)
        failed = FailedJobRegistry(queue=queue)
        last_failure = ""
        if failed.count:
            job = Job.fetch(failed.get_job_ids()[-1], connection=client)
            last_failure = f"; last failure: {(job.exc_info or '').strip().splitlines()[-1:]}"
        workers = [f"{w.name[:8]}(pid {w.pid}, {w.get_state()})" for w in Worker.all(queue=queue)]
        return (f"{queue.count} waiting, {ScheduledJobRegistry(queue=queue).count} scheduled, "
                f"{StartedJobRegistry(queue=queue).count} started, {failed.count} failed"
                f"{last_failure}; workers {workers}")
    finally:
        client.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def chain(anvil: Anvil) -> Iterator[Chain]:
    driver = Chain(anvil).deploy()
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    process = Receiver(secret=SECRET, log_path=tmp_path / "receiver.log")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def make_pipeline(request: pytest.FixtureRequest, chain: Chain, receiver: Receiver,
                  tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    built: list[Pipeline] = []

    def build(*, database_url: str, redis_url: str, **env: str) -> Pipeline:
        """``env`` overrides ``FAST_ENV`` and ``RPC_URL`` (e.g. to point ingest at a proxy)."""
        settings = {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    "RPC_URL": chain.node.url, **FAST_ENV, **env}
        services = Supervisor(env=child_env(**settings), log_dir=tmp_path)
        services.probes["queue"] = lambda: describe_queue(redis_url)
        pipeline = Pipeline(chain=chain, store=Store(database_url), receiver=receiver,
                            services=services)
        built.append(pipeline)
        return pipeline

    yield build
    failed = request.node.stash.get(_CALL_FAILED, False)
    for pipeline in built:
        if failed:
            print(f"\n=== e2e failure: services and logs (full logs in {tmp_path}) ===")
            print(pipeline.services.report(lines=60))
        pipeline.services.stop_all()


@pytest.fixture
def pipeline(make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str) -> Pipeline:
    return make_pipeline(database_url=plain_db_url, redis_url=redis_url)

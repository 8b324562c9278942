"""Operations tests: the real services as subprocesses (the e2e harness's supervisor, chain driver
and verifying receiver, reused as they are) plus the operations scripts run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chain import Chain
from tests.e2e.pipeline import CHAIN_ID, SECRET, Store
from tests.e2e.receiver import Receiver
from tests.e2e.supervisor import Supervisor, child_env
from tests.support.anvil import Anvil

ROOT = Path(__file__).resolve().parents[2]

SERVICE_ENV = {
    "CHAIN_ID": str(CHAIN_ID),
    "START_BLOCK": "0",
    "CONFIRMATIONS": "0",
    "POLL_INTERVAL": "0.2",
    "RPC_TIMEOUT": "5",
    "PROCESSOR_SWEEP_INTERVAL": "0.5",
    "WEBHOOK_TIMEOUT": "3",
    "WEBHOOK_RETRY_SCHEDULE": "0.5,1,1",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "LOG_FORMAT": "json",
    "METRICS_PORT": "0",
}


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


@dataclass
class OpsPipeline:
    chain: Chain
    store: Store
    receiver: Receiver
    services: Supervisor
    env: dict[str, str]
    state_home: Path

    def start(self, *names: str) -> None:
        for name in names or ("ingest", "processor", "workers"):
            self.services.add(name, name)

    def replay(self, *args: str, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``python scripts/replay.py ARGS`` with the services' environment."""
        return subprocess.run([sys.executable, "scripts/replay.py", *args], cwd=ROOT,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    def replay_json(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        result = self.replay(*args, "--json", **kwargs)
        assert result.returncode == 0, f"replay failed ({result.returncode}):\n{result.stderr}"
        summary: dict[str, Any] = json.loads(result.stdout)
        return summary


@pytest.fixture
def ops_chain(anvil: Anvil) -> Iterator[Chain]:
    driver = Chain(anvil).deploy()
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture
def ops_receiver(tmp_path: Path) -> Iterator[Receiver]:
    process = Receiver(secret=SECRET, log_path=tmp_path / "receiver.log")
    try:
        yield process
    finally:
        process.stop()


def _build(database_url: str, redis_url: str, chain: Chain, receiver: Receiver,
           tmp_path: Path) -> OpsPipeline:
    env = child_env(DATABASE_URL=database_url, REDIS_URL=redis_url, RPC_URL=chain.node.url,
                    **SERVICE_ENV)
    state_home = tmp_path / "state"
    env["XDG_STATE_HOME"] = str(state_home)
    return OpsPipeline(chain=chain, store=Store(database_url), receiver=receiver,
                       services=Supervisor(env=env, log_dir=tmp_path), env=env,
                       state_home=state_home)


@pytest.fixture
def ops_pipeline(request: pytest.FixtureRequest, ops_chain: Chain, ops_receiver: Receiver,
                 tmp_path: Path, redis_url: str) -> Iterator[OpsPipeline]:
    """The pipeline on the plain database, or on each backend when the test takes ``db_url``."""
    database_url = (request.getfixturevalue("db_url") if "db_url" in request.fixturenames
                    else request.getfixturevalue("plain_db_url"))
    pipeline = _build(database_url, redis_url, ops_chain, ops_receiver, tmp_path)
    try:
        yield pipeline
    finally:
        if request.node.stash.get(_CALL_FAILED, False):
            print(f"\n=== ops failure: services and logs (full logs in {tmp_path}) ===")
            print(pipeline.services.report(lines=40))
        pipeline.services.stop_all()

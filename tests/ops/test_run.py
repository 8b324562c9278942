"""``make run``: the scripted demo end to end (``ARGS=--once``), Ctrl-C in the interactive demo,
and one-line failures. Each run gets a database name of its own (``make run`` must create it)
on the test server and the test Redis db index."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support import databases
from tests.support.anvil import Anvil

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def absent_database(postgres_server_url: str) -> Iterator[str]:
    """A database URL whose database does not exist yet; dropped afterwards."""
    url = databases.with_database(postgres_server_url, f"bh_test_run_{uuid.uuid4().hex[:10]}")
    try:
        yield url
    finally:
        databases.drop_database(url)


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"RPC_URL", "CHAIN_ID", "START_BLOCK", "METRICS_PORT", "MAKEFLAGS"}}
    return {**env, "DATABASE_URL": database_url, "REDIS_URL": redis_url}


def _delivered(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("""SELECT d.kind, d.status FROM deliveries d
                               JOIN triggers t ON t.id = d.trigger_id
                               WHERE t.name = 'demo-large-transfers' ORDER BY d.id""").fetchall()
    return [(kind, status) for kind, status in rows]


def test_make_run_once_succeeds(absent_database: str, redis_url: str) -> None:
    # `-o install`: this checkout is installed already, and reinstalling node_modules under
    # concurrently running tests would pull anvil from under them. Everything else is the
    # real target: services, database creation, migration, honcho, the demo.
    started = time.monotonic()
    result = subprocess.run(["make", "--no-print-directory", "-o", "install", "run",
                             "ARGS=--once --timeout 40"],
                            cwd=ROOT, env=_env(absent_database, redis_url), capture_output=True,
                            text=True, timeout=120)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert elapsed < 50, f"the smoke test took {elapsed:.0f} s"
    assert "created database" in output and "schema migrated" in output
    # Each service ran as its own role (and the demo's webhooks arrived, so each could work).
    assert ("services connect as ingest=blockhook_ingest, processor=blockhook_processor, "
            "workers=blockhook_workers") in output
    assert "once: OK, signed webhooks received and verified" in output
    verified = re.findall(r"receiver\s+\| ✔ verified (dlv_\d+) event\.matched", output)
    assert len(set(verified)) == 3, output[-4000:]  # the mint and the two large transfers
    assert "✘ rejected" not in output
    # Every process was stopped cleanly after the receiver's success.
    for name in ("anvil", "ingest", "processor", "workers", "demo"):
        assert re.search(rf"system\s+\| {name} stopped \(rc=(0|-15)\)", output), name
    assert _delivered(absent_database) == [("matched", "delivered")] * 3


def test_interactive_demo_stops_cleanly_on_ctrl_c(absent_database: str, redis_url: str) -> None:
    process = subprocess.Popen([sys.executable, "scripts/run.py"], cwd=ROOT,
                               env=_env(absent_database, redis_url), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            lines.append(line)
            if "✔ verified" in line or time.monotonic() > deadline:
                break
        assert any("✔ verified" in line for line in lines), "".join(lines[-60:])
        # What a terminal's Ctrl-C does: SIGINT to the foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-4000:]
    assert "run       | stopped" in output
    assert "sending SIGKILL" not in output, "every process exits on SIGTERM within honcho's wait"


def test_unreachable_database_is_one_line(redis_url: str) -> None:
    result = subprocess.run([sys.executable, "scripts/run.py", "--once"], cwd=ROOT,
                            env=_env("postgresql://postgres@127.0.0.1:1/blockhook", redis_url),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("run: cannot connect to the database server")
    assert result.stderr.count("\n") == 1


def test_once_fails_with_the_reason_when_webhooks_do_not_arrive_in_time(
        absent_database: str, redis_url: str) -> None:
    # --timeout 0: the demo gives up right after its last transaction is mined, long before
    # ingest (0.2 s poll), the processor and a worker could have delivered anything.
    result = subprocess.run([sys.executable, "scripts/run.py", "--once", "--timeout", "0"],
                            cwd=ROOT, env=_env(absent_database, redis_url), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout[-4000:]
    last = result.stdout.strip().splitlines()[-1]
    assert "once: FAILED, demo stopped first (rc=1): demo: no complete set of 3 verified " \
           "webhooks within 0 s" in last, last


def test_with_rpc_url_runs_the_pipeline_against_that_chain(absent_database: str, redis_url: str,
                                                           anvil: Anvil) -> None:
    """``RPC_URL`` set: no devnet, no demo; ingest, processor and workers on that chain, with
    the triggers in the database, until Ctrl-C."""
    anvil.mine(5)
    env = {**_env(absent_database, redis_url), "RPC_URL": anvil.url, "START_BLOCK": "0"}
    process = subprocess.Popen([sys.executable, "scripts/run.py"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        checkpoint = None
        while checkpoint is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            try:
                with psycopg.connect(absent_database, connect_timeout=2) as conn:
                    row = conn.execute("SELECT block_number FROM checkpoints WHERE chain_id = %s",
                                       (anvil.chain_id,)).fetchone()
                    checkpoint = row[0] if row else None
            except psycopg.Error:
                continue  # not created or migrated yet
        assert checkpoint == 5, f"ingest did not reach the head: {checkpoint}"
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-4000:]
    assert f"pipeline against {anvil.url}" in output
    started = set(re.findall(r"system\s+\| (\w+) started", output))
    assert started == {"ingest", "processor", "workers"}, started

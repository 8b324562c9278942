"""``python -m ingest`` as a real process: kill -9 mid catch-up, standby and handover, exit codes,
metrics, and a database that restarts under the indexer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from web3.contract import Contract

from tests.ingest.conftest import (
    IngestProcess,
    chain_logs,
    checkpoint_of,
    emit_blocks,
    fetch,
    ingest_settings,
    running_indexer,
    stored_logs,
    wait_for_checkpoint,
    wait_until,
)
from tests.support import databases
from tests.support.anvil import Anvil
from tests.support.pgcluster import PgCluster
from tests.support.ports import free_port


def _many_blocks(anvil: Anvil, emitter: Contract, *, rounds: int, empty: int, logs: int) -> None:
    for _ in range(rounds):
        emit_blocks(emitter, 1, logs)
        anvil.mine(empty)


async def _assert_stored_equals_chain(db_url: str, anvil: Anvil) -> None:
    stored = await stored_logs(db_url)
    assert len(stored) == len(set(stored)), "duplicates stored"
    assert set(stored) == chain_logs(anvil)
    [batches] = await fetch(db_url, "SELECT coalesce(sum(row_count), 0) AS n FROM event_batches")
    assert batches["n"] == len(stored)


async def test_kill_9_mid_catch_up_then_restart_stores_exactly_the_chain(
        db_url: str, anvil: Anvil, emitter: Contract, processes: list[IngestProcess]) -> None:
    _many_blocks(anvil, emitter, rounds=40, empty=40, logs=15)
    head = anvil.head()
    first = IngestProcess(db_url, anvil.url, MAX_BLOCK_RANGE="2")
    processes.append(first)

    async def midway() -> bool:
        checkpoint = await checkpoint_of(db_url)
        return checkpoint is not None and checkpoint[0] > head // 4
    await wait_until(midway, what="a checkpoint a quarter of the way")
    first.kill()  # SIGKILL: no cleanup, the open transaction dies with the connection
    killed_at = await checkpoint_of(db_url)
    assert killed_at is not None and killed_at[0] < head, "killed too late to mean anything"
    second = IngestProcess(db_url, anvil.url, MAX_BLOCK_RANGE="50")
    processes.append(second)
    await wait_for_checkpoint(db_url, anvil, within=60)
    assert second.terminate()[0] == 0
    await _assert_stored_equals_chain(db_url, anvil)


async def test_chain_id_mismatch_exits_non_zero_with_one_line(
        plain_db_url: str, anvil: Anvil, processes: list[IngestProcess]) -> None:
    proc = IngestProcess(plain_db_url, anvil.url, CHAIN_ID="1")
    processes.append(proc)
    code, stderr = proc.wait(30)
    assert code == 1
    lines = stderr.strip().splitlines()
    assert lines[-1] == f"ingest: CHAIN_ID=1 but the node at {anvil.url} reports chain 31337"
    assert not any("Traceback" in line for line in lines)


async def test_unreachable_database_at_start_exits_non_zero_with_one_line(
        anvil: Anvil, processes: list[IngestProcess]) -> None:
    proc = IngestProcess(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", anvil.url)
    processes.append(proc)
    code, stderr = proc.wait(30)
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith("ingest: cannot connect to the database")


async def test_second_indexer_is_standby_and_takes_over_when_the_first_dies(
        db_url: str, anvil: Anvil, emitter: Contract, processes: list[IngestProcess]) -> None:
    emit_blocks(emitter, 3, 4)
    metrics_port = free_port()
    active = IngestProcess(db_url, anvil.url)
    processes.append(active)
    await wait_for_checkpoint(db_url, anvil)
    standby = IngestProcess(db_url, anvil.url, METRICS_PORT=str(metrics_port))
    processes.append(standby)

    async def says_standby() -> bool:
        return "standby" in standby.output()
    await wait_until(says_standby, what="the second indexer to log that it is standby")
    emit_blocks(emitter, 2, 4)
    await wait_for_checkpoint(db_url, anvil)
    assert '"active' not in standby.output()

    active.kill()
    emit_blocks(emitter, 3, 4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_for_checkpoint(db_url, anvil, within=15)
    assert loop.time() - started < 5, "the standby took too long to take over"
    assert "active: holding the writer lock" in standby.output()
    await _assert_stored_equals_chain(db_url, anvil)

    exposition = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
    for name in ("blockhook_ingest_head_block", "blockhook_ingest_checkpoint_block",
                 "blockhook_ingest_lag_blocks", "blockhook_ingest_logs_total",
                 "blockhook_ingest_batch_duration_seconds_bucket", "blockhook_ingest_rpc_errors_total",
                 "blockhook_ingest_range_blocks", "blockhook_ingest_reorgs_total",
                 "blockhook_ingest_reorg_depth_blocks_bucket"):
        assert name in exposition
    assert f"blockhook_ingest_head_block {float(anvil.head())}" in exposition
    assert standby.terminate()[0] == 0  # SIGTERM: clean exit 0


@pytest.mark.slow
async def test_database_restart_under_the_indexer_loses_and_duplicates_nothing(
        pg_cluster: PgCluster, anvil: Anvil, emitter: Contract) -> None:
    db_url = databases.create_database(pg_cluster.url)
    databases.alembic(db_url, "upgrade", "head")
    _many_blocks(anvil, emitter, rounds=10, empty=5, logs=10)
    async with running_indexer(ingest_settings(db_url, anvil.url, max_block_range=2)):
        await wait_until(lambda: _has_checkpoint(db_url), what="a first checkpoint")
        await asyncio.to_thread(pg_cluster.restart)
        _many_blocks(anvil, emitter, rounds=5, empty=2, logs=10)
        await wait_for_checkpoint(db_url, anvil, within=60)
        await asyncio.to_thread(pg_cluster.stop)
        emit_blocks(emitter, 2, 10)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg_cluster.start)
        await wait_for_checkpoint(db_url, anvil, within=60)
    await _assert_stored_equals_chain(db_url, anvil)


async def _has_checkpoint(db_url: str) -> bool:
    return await checkpoint_of(db_url) is not None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_start_up_imports_nothing_the_ingest_path_does_not_use() -> None:
    """Start-up to the first request is part of every run's time (docs/ingest.md): the indexer
    validates no ABI, holds no webhook secret and has no ORM, so eth-abi/eth-utils, web3,
    cryptography and SQLAlchemy (together ~150 ms of imports) stay out of its process, and so
    does rich (structlog would import it: core/__init__.py)."""
    code = ("import sys, ingest.__main__; print(' '.join(sorted({m.split('.')[0] for m in "
            "sys.modules} & {'eth_abi', 'eth_utils', 'web3', 'cryptography', 'sqlalchemy', 'rich'})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "", f"imported at start-up: {result.stdout.strip()}"

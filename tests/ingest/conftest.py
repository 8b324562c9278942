"""Helpers for ingest tests: a deployed log emitter, the chain's logs and the stored logs in one
comparable form, an in-process indexer, and ``python -m ingest`` as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from web3 import Web3
from web3.contract import Contract

from core.settings import IngestSettings
from ingest.endpoints import EndpointPool
from ingest.metrics import IngestMetrics
from ingest.poller import Indexer
from tests.support.anvil import Anvil
from tests.support.contracts import deploy, web3_for

ROOT = Path(__file__).resolve().parents[2]

# (block_number, block_hash, tx_hash, tx_index, log_index, address, topic0..3, data)
LogRow = tuple[Any, ...]


@pytest.fixture
def w3(anvil: Anvil) -> Web3:
    return web3_for(anvil.url)


@pytest.fixture
def emitter(w3: Web3) -> Contract:
    return deploy(w3, "LogEmitter")


def chain_logs(anvil: Anvil, first: int = 0, last: int | None = None) -> set[LogRow]:
    """The node's logs in the stored form (hex lowercase, absent topics ``None``)."""
    to_block = hex(last) if last is not None else "latest"
    rows = set()
    for item in anvil.rpc("eth_getLogs", {"fromBlock": hex(first), "toBlock": to_block}):
        topics = [t.lower() for t in item["topics"]] + [None] * (4 - len(item["topics"]))
        rows.add((int(item["blockNumber"], 16), item["blockHash"].lower(),
                  item["transactionHash"].lower(), int(item["transactionIndex"], 16),
                  int(item["logIndex"], 16), item["address"].lower(), *topics,
                  item["data"].lower()))
    return rows


async def stored_logs(db_url: str, *, invalidated: bool = False) -> list[LogRow]:
    """Stored events (valid ones by default) as a list, so duplicates would show."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            """SELECT block_number, block_hash, tx_hash, tx_index, log_index, address,
                      topic0, topic1, topic2, topic3, data FROM events
               WHERE invalidated = $1 ORDER BY block_number, log_index""", invalidated)
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def fetch(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def checkpoint_of(db_url: str, chain_id: int = 31337) -> tuple[int, str] | None:
    rows = await fetch(db_url, "SELECT block_number, block_hash FROM checkpoints WHERE chain_id = $1",
                       chain_id)
    return (rows[0]["block_number"], rows[0]["block_hash"]) if rows else None


async def wait_until(condition: Callable[[], Awaitable[bool]], *, within: float = 30.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_checkpoint(db_url: str, anvil: Anvil, *, within: float = 30.0) -> None:
    """Until the checkpoint is the node's head block (number and hash)."""
    async def caught_up() -> bool:
        head = anvil.rpc("eth_getBlockByNumber", "latest", False)
        return await checkpoint_of(db_url) == (int(head["number"], 16), head["hash"])
    await wait_until(caught_up, within=within, what="the checkpoint to reach the head")


def ingest_settings(db_url: str, rpc_url: str, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {"database_url": db_url, "rpc_url": rpc_url, "start_block": 0,
                              "poll_interval": 0.1, "metrics_port": 0, "rpc_timeout": 5.0,
                              "chain_id": None, "confirmations": 0, "ingest_addresses": ""}
    values.update(overrides)
    return IngestSettings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running_indexer(settings: IngestSettings) -> AsyncIterator[Indexer]:
    """An in-process indexer over the production source (``EndpointPool`` of ``RPC_URL``); on
    exit it is stopped like SIGTERM would and must end cleanly."""
    stop = asyncio.Event()
    metrics = IngestMetrics(registry=None)
    async with EndpointPool(settings.rpc_endpoints, timeout=settings.rpc_timeout,
                            metrics=metrics,
                            max_response_bytes=settings.rpc_max_response_bytes) as source:
        indexer = Indexer(settings, source, metrics=metrics)
        task = asyncio.ensure_future(indexer.run(stop))
        try:
            yield indexer
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


class IngestProcess:
    """``python -m ingest`` as a real subprocess, configured by environment; its stderr (the
    logs, JSON lines) goes to a file that ``output()`` reads while it runs."""

    def __init__(self, db_url: str, rpc_url: str, **env: str) -> None:
        self.env = {**os.environ, "DATABASE_URL": db_url, "RPC_URL": rpc_url, "START_BLOCK": "0",
                    "POLL_INTERVAL": "0.1", "LOG_FORMAT": "json", "METRICS_PORT": "0", **env}
        if "CHAIN_ID" not in env:
            self.env.pop("CHAIN_ID", None)
        self.stderr = tempfile.NamedTemporaryFile(prefix="bh-ingest-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "ingest"], cwd=ROOT, env=self.env,
                                        stdout=subprocess.DEVNULL, stderr=self.stderr)

    def output(self) -> str:
        return Path(self.stderr.name).read_text()

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        self.process.wait(timeout)
        return self.process.returncode, self.output()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> tuple[int, str]:
        self.process.terminate()
        return self.wait(timeout)


@pytest.fixture
def processes() -> Iterator[list[IngestProcess]]:
    """Subprocesses started by a test; whatever is left running is killed at the end."""
    started: list[IngestProcess] = []
    yield started
    for proc in started:
        proc.kill()
        proc.stderr.close()


def emit_blocks(emitter: Contract, blocks: int, logs_per_block: int) -> None:
    """``blocks`` blocks (automine: one transaction each) of ``logs_per_block`` logs."""
    w3 = emitter.w3
    for _ in range(blocks):
        w3.eth.wait_for_transaction_receipt(emitter.functions.emitMany(logs_per_block).transact())

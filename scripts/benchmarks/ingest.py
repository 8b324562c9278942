"""Ingest backfill throughput: the real indexer against a raw baseline, same chain, same run.

A dense devnet chain (1,000 blocks × 4 transactions × 50 logs = 200,000 logs from the
``LogEmitter`` fixture, mined with automine off) is backfilled into a throwaway database by:

- **indexer**: ``ingest.poller.Indexer`` in-process over the production source
  (``ingest.endpoints.EndpointPool``), from block 0 until its checkpoint is the head — the full
  path: adaptive fetcher, the completeness proof (every block's logs against its header's
  ``logsBloom``, keccak of repeated addresses and topics cached), blocks, checkpoint, one
  transaction per range, fetch of the next range overlapped with the write;
- **raw**: the floor of what any indexer must do — one batched JSON-RPC request per range
  (``eth_getLogs`` + the headers for ``block_time``) over one keep-alive aiohttp session, orjson,
  ``COPY`` into a temporary staging table, ``INSERT … SELECT … ON CONFLICT DO NOTHING``, next
  fetch overlapped with the write; no validation, no blocks, no checkpoint;
- **web3.py** (fetch only): ``AsyncWeb3(AsyncHTTPProvider).eth.get_logs`` over the same ranges,
  against the raw fetch + orjson parse, to show why the hot path does not use web3.py.

Both write paths use ranges of 50 blocks (10,000 logs). Backends: ``plain`` (the local server on
5432), ``timescale`` (a throwaway TimescaleDB cluster: a fresh hypertable, and one with 600
pre-created chunks). Each path runs three times per backend, alternating; the best run counts.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.logging import configure_logging  # noqa: E402
from core.settings import IngestSettings  # noqa: E402
from ingest.__main__ import tune_gc  # noqa: E402
from ingest.endpoints import EndpointPool  # noqa: E402
from ingest.poller import Indexer  # noqa: E402
from ingest.rpc import JsonRpcClient  # noqa: E402
from scripts.benchmarks.processes import peak_rss_mib  # noqa: E402
from scripts.benchmarks.report import Figure  # noqa: E402
from tests.support import databases  # noqa: E402
from tests.support.anvil import Anvil  # noqa: E402
from tests.support.http_server import BackgroundHttpServer  # noqa: E402
from tests.support.log_chain import gas_limit_for, mine_log_blocks  # noqa: E402

BLOCKS = 1_000
TXS_PER_BLOCK = 4
LOGS_PER_TX = 50
RANGE_BLOCKS = 50
DENSE_BLOCKS = 40
DENSE_LOGS_PER_BLOCK = 5_000
DENSE_RAW_RANGE = 2  # blocks: 10,000 logs, the indexer's own range size on this chain
DEFAULT_MAX_BLOCK_RANGE = 2_000
RSS_BOUND_MIB = 256
RUNS = 3
PRECREATED_CHUNKS = 600
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CHAIN_ID = 31337


def build_chain(blocks: int = BLOCKS, txs_per_block: int = TXS_PER_BLOCK,
                logs_per_tx: int = LOGS_PER_TX) -> tuple[Anvil, int]:
    """A devnet of ``blocks`` blocks of ``txs_per_block`` × ``logs_per_tx`` logs; returns the
    node and the number of logs on it."""
    node = Anvil(extra_args=["--gas-limit", str(gas_limit_for(txs_per_block, logs_per_tx))])
    mine_log_blocks(node, blocks=blocks, txs_per_block=txs_per_block, logs_per_tx=logs_per_tx)
    logs = len(node.rpc("eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest"}))
    return node, logs


@dataclass
class Backend:
    name: str
    url: str
    cleanup: Callable[[], None]


@contextmanager
def backends(which: str) -> Iterator[list[Backend]]:
    created: list[Backend] = []
    clusters: list[Any] = []
    try:
        if which in ("plain", "both"):
            url = databases.create_database(LOCAL_SERVER, prefix="bh_bench")
            databases.alembic(url, "upgrade", "head")
            created.append(Backend("plain", url, lambda u=url: databases.drop_database(u)))
        if which in ("timescale", "both"):
            from tests.support.pgcluster import TIMESCALE_LIBRARY, timescale_cluster

            if not TIMESCALE_LIBRARY.is_file():
                print(f"timescale: skipped ({TIMESCALE_LIBRARY} missing)", file=sys.stderr)
            else:
                cluster = timescale_cluster()
                clusters.append(cluster)
                for name, chunks in (("timescale", 0), (f"timescale-{PRECREATED_CHUNKS}-chunks",
                                                         PRECREATED_CHUNKS)):
                    url = databases.create_database(cluster.url, prefix="bh_bench")
                    databases.alembic(url, "upgrade", "head")
                    if chunks:
                        asyncio.run(_precreate_chunks(url, chunks))
                    created.append(Backend(name, url, lambda: None))
        yield created
    finally:
        for backend in created:
            backend.cleanup()
        for cluster in clusters:
            cluster.destroy()


async def _precreate_chunks(url: str, chunks: int) -> None:
    """One row per day for ``chunks`` days back, on another chain: ``chunks`` chunks at the
    default 1-day interval (the bench chain's own rows land in today's chunk)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash,
                                   tx_index, log_index, address, data)
               SELECT 999, d, '0x' || lpad(to_hex(d), 64, '0'), now() - make_interval(days => d),
                      '0x' || lpad(to_hex(d), 64, '0'), 0, 0, '0x' || repeat('0', 40), '0x'
               FROM generate_series(1, $1) AS d""", chunks)
        count = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'events'")
        if count < chunks:
            raise RuntimeError(f"expected {chunks} chunks, got {count}")
    finally:
        await conn.close()


async def _reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DELETE FROM events WHERE chain_id = {CHAIN_ID}")
        await conn.execute("TRUNCATE event_batches, blocks, checkpoints, reorgs")
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


async def _stored(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM events WHERE chain_id = $1", CHAIN_ID))
    finally:
        await conn.close()


# ------------------------------------------------------------------------------ the indexer

async def run_indexer(url: str, rpc_url: str, head: int, max_block_range: int = RANGE_BLOCKS) -> float:
    settings = IngestSettings(_env_file=None, database_url=url, rpc_url=rpc_url,  # type: ignore[call-arg]
                              start_block=0, max_block_range=max_block_range, poll_interval=0.01,
                              metrics_port=0, log_level="WARNING")
    stop = asyncio.Event()
    from ingest import bloom
    bloom._bits_cache.clear()  # each run starts cold, as a new process would
    async with EndpointPool([rpc_url]) as source:
        indexer = Indexer(settings, source)
        started = time.perf_counter()
        task = asyncio.ensure_future(indexer.run(stop))
        while indexer.checkpoint is None or indexer.checkpoint.number < head:
            if task.done():
                task.result()
                raise RuntimeError("indexer stopped early")
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
    return elapsed


def run_process(url: str, rpc_url: str, head: int, *, cwd: Path = ROOT,
                **env: str) -> tuple[float, float]:
    """``python -m ingest`` from process start until its checkpoint is ``head``: seconds and
    peak RSS in MiB (``VmHWM``, read before the process is stopped)."""
    environ = {**os.environ, "DATABASE_URL": url, "RPC_URL": rpc_url, "START_BLOCK": "0",
               "POLL_INTERVAL": "0.01", "METRICS_PORT": "0", "LOG_LEVEL": "WARNING", **env}
    environ.pop("CHAIN_ID", None)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "ingest"], cwd=cwd, env=environ,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        asyncio.run(_until_checkpoint(url, head, process))
        elapsed = time.perf_counter() - started
        peak = peak_rss_mib(process.pid)
    finally:
        process.terminate()
        process.communicate(timeout=30)
    return elapsed, peak


async def _until_checkpoint(url: str, head: int, process: subprocess.Popen[bytes]) -> None:
    conn = await asyncpg.connect(url)  # while the child starts
    try:
        while (await conn.fetchval("SELECT block_number FROM checkpoints WHERE chain_id = $1",
                                   CHAIN_ID) or -1) < head:
            if process.poll() is not None:
                output = process.stderr.read().decode()[-2000:] if process.stderr else ""
                raise RuntimeError(f"python -m ingest exited {process.returncode}: {output}")
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


class FirstRequest(BackgroundHttpServer):
    """Notes when the first JSON-RPC request arrives; answers 503 (the indexer retries)."""

    thread_name = "first-request"

    def __init__(self) -> None:
        self.arrived: float | None = None
        self.event = threading.Event()
        super().__init__()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.arrived is None:
            self.arrived = time.perf_counter()
            self.event.set()
        return web.Response(status=503)


def startup_seconds(*, runs: int = 7, cwd: Path = ROOT) -> float:
    """Median seconds from ``python -m ingest``'s process start to its first JSON-RPC request
    (interpreter start, imports, settings, logging, metrics endpoint, the session)."""
    times = []
    for _ in range(runs):
        server = FirstRequest()
        environ = {**os.environ, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
                   "RPC_URL": server.url, "METRICS_PORT": "0", "LOG_LEVEL": "ERROR"}
        try:
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-m", "ingest"], cwd=cwd, env=environ,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not server.event.wait(30) or server.arrived is None:
                raise RuntimeError("python -m ingest sent no request within 30 s")
            times.append(server.arrived - started)
            process.terminate()
            process.wait(30)
        finally:
            server.close()
    return statistics.median(times)


# ------------------------------------------------------------------------------ the raw baseline

_COLUMNS = ("chain_id", "block_number", "block_hash", "block_time", "tx_hash", "tx_index",
            "log_index", "address", "topic0", "topic1", "topic2", "topic3", "data")


async def _raw_fetch(session: aiohttp.ClientSession, rpc_url: str, first: int,
                     last: int) -> list[tuple[object, ...]]:
    calls = [{"jsonrpc": "2.0", "id": 0, "method": "eth_getLogs",
              "params": [{"fromBlock": hex(first), "toBlock": hex(last)}]}]
    calls += [{"jsonrpc": "2.0", "id": n - first + 1, "method": "eth_getBlockByNumber",
               "params": [hex(n), False]} for n in range(first, last + 1)]
    async with session.post(rpc_url, data=orjson.dumps(calls),
                            headers={"content-type": "application/json"}) as response:
        replies = orjson.loads(await response.read())
    replies.sort(key=lambda reply: reply["id"])
    times = {int(r["result"]["number"], 16): datetime.fromtimestamp(int(r["result"]["timestamp"], 16), UTC)
             for r in replies[1:]}
    records = []
    for item in replies[0]["result"]:
        topics = item["topics"] + [None] * (4 - len(item["topics"]))
        number = int(item["blockNumber"], 16)
        records.append((CHAIN_ID, number, item["blockHash"], times[number], item["transactionHash"],
                        int(item["transactionIndex"], 16), int(item["logIndex"], 16),
                        item["address"], *topics, item["data"]))
    return records


async def run_raw(url: str, rpc_url: str, head: int, range_blocks: int = RANGE_BLOCKS) -> float:
    conn = await asyncpg.connect(url)
    await conn.execute(
        """CREATE TEMPORARY TABLE raw_staging (chain_id bigint, block_number bigint,
           block_hash text, block_time timestamptz, tx_hash text, tx_index integer,
           log_index integer, address text, topic0 text, topic1 text, topic2 text, topic3 text,
           data text) ON COMMIT DELETE ROWS""")
    columns = ", ".join(_COLUMNS)
    insert = (f"INSERT INTO events ({columns}) SELECT {columns} FROM raw_staging "
              "ON CONFLICT (chain_id, block_hash, log_index, block_time) WHERE NOT invalidated DO NOTHING")
    ranges = [(first, min(head, first + range_blocks - 1)) for first in range(0, head + 1, range_blocks)]
    try:
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            pending = asyncio.ensure_future(_raw_fetch(session, rpc_url, *ranges[0]))
            for index in range(len(ranges)):
                records = await pending
                if index + 1 < len(ranges):
                    pending = asyncio.ensure_future(_raw_fetch(session, rpc_url, *ranges[index + 1]))
                async with conn.transaction():
                    await conn.copy_records_to_table("raw_staging", records=records, columns=_COLUMNS)
                    await conn.execute(insert)
            return time.perf_counter() - started
    finally:
        await conn.close()


# ------------------------------------------------------------------------------ web3.py vs raw fetch

async def fetch_web3(rpc_url: str, head: int) -> float:
    from web3 import AsyncWeb3
    from web3.providers import AsyncHTTPProvider

    w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url))
    started = time.perf_counter()
    for first in range(0, head + 1, RANGE_BLOCKS):
        await w3.eth.get_logs({"fromBlock": first, "toBlock": min(head, first + RANGE_BLOCKS - 1)})
    elapsed = time.perf_counter() - started
    await w3.provider.disconnect()
    return elapsed


async def completeness_check(rpc_url: str, head: int) -> float:
    """CPU seconds of ``ingest.completeness.check_range`` over the whole chain (50-block ranges),
    starting from an empty keccak cache: what proving every range complete costs."""
    from ingest import bloom
    from ingest.completeness import check_range

    ranges = [(first, min(head, first + RANGE_BLOCKS - 1)) for first in range(0, head + 1, RANGE_BLOCKS)]
    async with JsonRpcClient(rpc_url) as client:
        fetched = [(first, await client.headers(range(first, last + 1)), await client.logs(first, last))
                   for first, last in ranges]
    bloom._bits_cache.clear()
    started = time.perf_counter()
    for first, headers, logs in fetched:
        check = check_range(first, headers, logs)
        if check.problem is not None:
            raise RuntimeError(f"range {first} not proven complete: {check.problem}")
    return time.perf_counter() - started


async def fetch_raw(rpc_url: str, head: int) -> float:
    async with JsonRpcClient(rpc_url) as client:
        started = time.perf_counter()
        for first in range(0, head + 1, RANGE_BLOCKS):
            await client.logs(first, min(head, first + RANGE_BLOCKS - 1))
        return time.perf_counter() - started


# ------------------------------------------------------------------------------ entry point

def run(backend: str = "both") -> list[Figure]:
    configure_logging(level="WARNING")
    # As python -m ingest does at start; the raw loop runs in this process too, so it gets the
    # same collector settings (a process-wide knob is no advantage of the indexer's).
    tune_gc()
    figures = [Figure("ingest start-up to first request (python -m ingest)", startup_seconds(), "s",
                      higher_is_better=False, note="median of 7: interpreter, imports, settings, "
                      "logging, metrics endpoint, first eth_chainId")]
    node, total_logs = build_chain()
    dense, dense_logs = build_chain(DENSE_BLOCKS, 1, DENSE_LOGS_PER_BLOCK)
    head, dense_head = node.head(), dense.head()
    try:
        raw_fetch = min(asyncio.run(fetch_raw(node.url, head)) for _ in range(RUNS))
        web3_fetch = min(asyncio.run(fetch_web3(node.url, head)) for _ in range(RUNS))
        figures.append(Figure("ingest fetch+parse: web3.py get_logs", total_logs / web3_fetch,
                              "logs/s", baseline=total_logs / raw_fetch,
                              note="baseline: ingest.rpc raw batched JSON-RPC + orjson"))
        check = min(asyncio.run(completeness_check(node.url, head)) for _ in range(RUNS))
        figures.append(Figure("ingest completeness check (logsBloom, cold keccak cache)",
                              total_logs / check, "logs/s", baseline=total_logs / raw_fetch,
                              note="CPU only; baseline: raw fetch+parse of the same logs"))
        with backends(backend) as selected:
            for db in selected:
                figures += standard_workload(db, node.url, head, total_logs)
                figures += dense_workload(db, dense.url, dense_head, dense_logs)
    finally:
        node.stop()
        dense.stop()
    return figures


def _timed(db: Backend, total_logs: int, path: Callable[[], float]) -> float:
    asyncio.run(_reset(db.url))
    elapsed = path()
    stored = asyncio.run(_stored(db.url))
    if stored != total_logs:
        raise RuntimeError(f"stored {stored} of {total_logs} logs")
    return elapsed


def standard_workload(db: Backend, rpc_url: str, head: int, total_logs: int) -> list[Figure]:
    """1,000 blocks of 200 logs: the indexer (MAX_BLOCK_RANGE=50) against the raw loop (50-block
    ranges), alternating, best of RUNS."""
    raw_times, indexer_times = [], []
    for _ in range(RUNS):
        raw_times.append(_timed(db, total_logs, lambda: asyncio.run(run_raw(db.url, rpc_url, head))))
        indexer_times.append(_timed(db, total_logs,
                                    lambda: asyncio.run(run_indexer(db.url, rpc_url, head))))
    raw_rate = total_logs / min(raw_times)
    return [Figure(f"ingest backfill [{db.name}]", total_logs / min(indexer_times), "logs/s",
                   baseline=raw_rate, bar=0.5 * raw_rate, goal=0.8 * raw_rate,
                   note=f"{total_logs:,} logs, {head + 1:,} blocks; bar 0.5x raw, goal 0.8x")]


def dense_workload(db: Backend, rpc_url: str, head: int, total_logs: int) -> list[Figure]:
    """40 blocks of 5,000 logs with the default MAX_BLOCK_RANGE (2000): ``python -m ingest``
    from process start and the indexer in-process, against the raw loop over ranges of the
    indexer's size (2 blocks, 10,000 logs), alternating, best of RUNS; the process's peak RSS."""
    raw_times, inproc_times, process_times, peaks = [], [], [], []
    for _ in range(RUNS):
        raw_times.append(_timed(db, total_logs, lambda: asyncio.run(
            run_raw(db.url, rpc_url, head, range_blocks=DENSE_RAW_RANGE))))
        inproc_times.append(_timed(db, total_logs, lambda: asyncio.run(
            run_indexer(db.url, rpc_url, head, max_block_range=DEFAULT_MAX_BLOCK_RANGE))))
        asyncio.run(_reset(db.url))
        elapsed, peak_mib = run_process(db.url, rpc_url, head)
        if asyncio.run(_stored(db.url)) != total_logs:
            raise RuntimeError("python -m ingest did not store every log")
        process_times.append(elapsed)
        peaks.append(peak_mib)
    raw_rate = total_logs / min(raw_times)
    seconds, peak = min(process_times), max(peaks)
    shape = f"{total_logs:,} logs in {head - 1} blocks"
    return [
        Figure(f"ingest dense from process start [{db.name}]", total_logs / seconds, "logs/s",
               baseline=raw_rate, bar=0.5 * raw_rate, goal=raw_rate / 1.25,
               note=f"{shape}, MAX_BLOCK_RANGE default; goal: at most 1.25x the raw loop's time"),
        Figure(f"ingest dense in-process [{db.name}]", total_logs / min(inproc_times), "logs/s",
               baseline=raw_rate, note=f"{shape}; baseline: raw loop, ranges of {DENSE_RAW_RANGE} blocks"),
        Figure(f"ingest dense peak RSS of python -m ingest [{db.name}]", peak, "MiB",
               bar=RSS_BOUND_MIB, higher_is_better=False, note="VmHWM, highest of the runs"),
    ]

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
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.logging import configure_logging  # noqa: E402
from core.settings import IngestSettings  # noqa: E402
from ingest.endpoints import EndpointPool  # noqa: E402
from ingest.poller import Indexer  # noqa: E402
from ingest.rpc import JsonRpcClient  # noqa: E402
from scripts.benchmarks.report import Figure  # noqa: E402
from tests.support import databases  # noqa: E402
from tests.support.anvil import Anvil  # noqa: E402
from tests.support.contracts import deploy, web3_for  # noqa: E402

BLOCKS = 1_000
TXS_PER_BLOCK = 4
LOGS_PER_TX = 50
RANGE_BLOCKS = 50
RUNS = 3
PRECREATED_CHUNKS = 600
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CHAIN_ID = 31337


def build_chain() -> tuple[Anvil, int]:
    """A dense devnet; returns the node and the number of logs on it."""
    node = Anvil(extra_args=["--gas-limit", "60000000"])
    w3 = web3_for(node.url)
    emitter = deploy(w3, "LogEmitter")
    account = w3.eth.accounts[0]
    data = emitter.functions.emitMany(LOGS_PER_TX).build_transaction(
        {"from": account, "gas": 300_000})["data"]
    node.rpc("evm_setAutomine", False)
    tx = {"from": account, "to": emitter.address, "data": data, "gas": hex(300_000)}
    with httpx.Client(timeout=60) as client:
        for _ in range(BLOCKS):
            calls = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [tx]}
                     for i in range(TXS_PER_BLOCK)]
            calls.append({"jsonrpc": "2.0", "id": 99, "method": "anvil_mine", "params": ["0x1"]})
            replies = client.post(node.url, json=calls).json()
            if any("error" in reply for reply in replies):
                raise RuntimeError(f"chain generation failed: {replies}")
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

async def run_indexer(url: str, rpc_url: str, head: int) -> float:
    settings = IngestSettings(_env_file=None, database_url=url, rpc_url=rpc_url,  # type: ignore[call-arg]
                              start_block=0, max_block_range=RANGE_BLOCKS, poll_interval=0.01,
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


async def run_raw(url: str, rpc_url: str, head: int) -> float:
    conn = await asyncpg.connect(url)
    await conn.execute(
        """CREATE TEMPORARY TABLE raw_staging (chain_id bigint, block_number bigint,
           block_hash text, block_time timestamptz, tx_hash text, tx_index integer,
           log_index integer, address text, topic0 text, topic1 text, topic2 text, topic3 text,
           data text) ON COMMIT DELETE ROWS""")
    columns = ", ".join(_COLUMNS)
    insert = (f"INSERT INTO events ({columns}) SELECT {columns} FROM raw_staging "
              "ON CONFLICT (chain_id, block_hash, log_index, block_time) WHERE NOT invalidated DO NOTHING")
    ranges = [(first, min(head, first + RANGE_BLOCKS - 1)) for first in range(0, head + 1, RANGE_BLOCKS)]
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
    node, total_logs = build_chain()
    head = node.head()
    figures: list[Figure] = []
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
                raw_times, indexer_times = [], []
                for _ in range(RUNS):
                    for path, times in ((run_raw, raw_times), (run_indexer, indexer_times)):
                        asyncio.run(_reset(db.url))
                        times.append(asyncio.run(path(db.url, node.url, head)))
                        stored = asyncio.run(_stored(db.url))
                        if stored != total_logs:
                            raise RuntimeError(f"{path.__name__} stored {stored} of {total_logs} logs")
                raw_rate = total_logs / min(raw_times)
                indexer_rate = total_logs / min(indexer_times)
                figures.append(Figure(f"ingest backfill [{db.name}]", indexer_rate, "logs/s",
                                      baseline=raw_rate, bar=0.5 * raw_rate, goal=0.8 * raw_rate,
                                      note=f"{total_logs:,} logs, {head + 1:,} blocks; bar 0.5x raw, goal 0.8x"))
    finally:
        node.stop()
    return figures

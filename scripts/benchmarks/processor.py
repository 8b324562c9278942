"""Processor throughput and commit → enqueue latency, against a raw baseline in the same run.

Data: 100,000 stored ERC20 ``Transfer`` events (100 insert statements of 1,000 rows, as the
indexer writes them: 100 event batches) over 220 token addresses, 200 of them watched by 1,000
enabled triggers (5 per address) with mixed conditions — integer thresholds, ``in`` lists of
addresses, ``any``/``all``/``not`` nesting — about 10 % of events match.

- **processor**: ``processor.service.Processor.drain`` in-process, from every batch unprocessed
  to caught up: claim (``FOR UPDATE SKIP LOCKED``), load by id + ``block_time`` range, decode,
  compiled conditions, deliveries + ``processed_at`` in one transaction, then the RQ enqueue
  (``core.queue``) and ``queued`` marking;
- **raw**: the floor of that work — claim a batch, load its rows, one dict lookup per event and
  one integer compare per candidate, ``INSERT … SELECT unnest`` into a copy of ``deliveries``,
  mark the batch, one pipelined ``LPUSH`` of the new ids — no decoding, no conditions, no RQ.

Both run twice, alternating; the best run of each counts (the machine is shared; the 1-minute
load average is printed beside the figures).

Latency: ``python -m processor`` as a real process (LISTEN/NOTIFY) while a writer commits 50
events every 50 ms (1,000 events/s) for 15 s; per delivery ``queued_at − event_committed_at``
(the batch's commit-side timestamp to the moment its RQ job was written), p50/p99.

Hot contracts (``scripts/benchmarks/hot_triggers.py``, issue 18): the same processor on 100,000
events of one token under 500 range triggers and under 10,000 ``to eq`` triggers on that token's
``Transfer``, each beside the same events with 10 triggers, timed from process start; and the
share of evaluation time spent decoding, before and after the match index.

Factory triggers (``scripts/benchmarks/factory_triggers.py``, issue 20): 100,000 ``Swap`` events
of a factory's 10,000 children under one factory trigger, beside one trigger on a single child
(the baseline) and one on any address, in-process drain.

Backends: ``plain`` (a database on the local server), ``timescale-500-chunks`` (a throwaway
TimescaleDB cluster whose hypertable holds 500 daily chunks of history before the bench rows).
Redis: a redis-server of the benchmark's own.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.abi import parse_event_signature  # noqa: E402
from core.db import create_pool  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from processor.service import POOL_SERVER_SETTINGS, Processor  # noqa: E402
from scripts.benchmarks.factory_triggers import run_factory  # noqa: E402
from scripts.benchmarks.hot_triggers import run_hot  # noqa: E402
from scripts.benchmarks.report import Figure  # noqa: E402
from tests.e2e.redis_server import RedisServer  # noqa: E402
from tests.support import databases  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CHAIN_ID = 1
EVENTS = 100_000
STATEMENT_ROWS = 1_000
WATCHED_ADDRESSES = 200
UNWATCHED_ADDRESSES = 20
TRIGGERS_PER_ADDRESS = 5
WALLETS = 100
HISTORY_CHUNKS = 500
LATENCY_SECONDS = 15
RUNS = 2
LATENCY_TICK = 0.05
LATENCY_ROWS_PER_TICK = 50
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
TRANSFER_TOPIC = parse_event_signature(TRANSFER).topic0
MAX_VALUE = 1_000_000


def _address(prefix: int, n: int) -> str:
    return "0x" + f"{prefix:02x}" + f"{n:038x}"


TOKENS = [_address(0xAA, n) for n in range(WATCHED_ADDRESSES + UNWATCHED_ADDRESSES)]
WALLET_ADDRESSES = [_address(0xBB, n) for n in range(WALLETS)]


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


def _conditions(index: int) -> tuple[Any, int]:
    """Five condition shapes per address; also the baseline's threshold of equal selectivity."""
    wallets = WALLET_ADDRESSES
    shapes: list[tuple[Any, int]] = [
        ({"field": "value", "op": "gte", "value": str(990_000)}, 990_000),
        ({"all": [{"field": "value", "op": "gte", "value": "0x7a120"},  # 500,000
                  {"field": "from", "op": "in", "value": [w.upper().replace("0X", "0x")
                                                          for w in wallets[:6]]}]}, 970_000),
        ({"any": [{"field": "to", "op": "eq", "value": wallets[7]},
                  {"field": "value", "op": "lt", "value": 10_000}]}, 980_000),
        ({"not": {"field": "value", "op": "lt", "value": "980000"}}, 980_000),
        ({"all": [{"field": "value", "op": "gt", "value": "970000"},
                  {"field": "log_index", "op": "exists"},
                  {"field": "value", "op": "nin", "value": ["1", "2", "3"]}]}, 970_000),
    ]
    return shapes[index % len(shapes)]


@dataclass
class Backend:
    name: str
    url: str


@contextmanager
def backends(which: str) -> Iterator[list[Backend]]:
    created: list[Backend] = []
    drop: list[str] = []
    clusters: list[Any] = []
    try:
        if which in ("plain", "both"):
            url = databases.create_database(LOCAL_SERVER, prefix="bh_bench")
            drop.append(url)
            databases.alembic(url, "upgrade", "head")
            created.append(Backend("plain", url))
        if which in ("timescale", "both"):
            from tests.support.pgcluster import TIMESCALE_LIBRARY, timescale_cluster

            if not TIMESCALE_LIBRARY.is_file():
                print(f"timescale: skipped ({TIMESCALE_LIBRARY} missing)", file=sys.stderr)
            else:
                cluster = timescale_cluster()
                clusters.append(cluster)
                url = databases.create_database(cluster.url, prefix="bh_bench")
                databases.alembic(url, "upgrade", "head")
                created.append(Backend(f"timescale-{HISTORY_CHUNKS}-chunks", url))
        yield created
    finally:
        for url in drop:
            databases.drop_database(url)
        for cluster in clusters:
            cluster.destroy()


# --- data ------------------------------------------------------------------------------------

_INSERT = """
INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index,
                    address, topic0, topic1, topic2, data)
SELECT $1, u.block_number, u.block_hash, u.block_time, u.tx_hash, 0, u.log_index, u.address, $2,
       u.topic1, u.topic2, u.data
FROM unnest($3::bigint[], $4::text[], $5::timestamptz[], $6::text[], $7::int[], $8::text[],
            $9::text[], $10::text[], $11::text[])
     AS u(block_number, block_hash, block_time, tx_hash, log_index, address, topic1, topic2, data)
"""


def _rows(rng: random.Random, first_block: int, count: int, start: datetime,
          per_block: int = 10) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(9)]
    for i in range(count):
        block = first_block + i // per_block
        value = rng.randrange(MAX_VALUE)
        row = [block, "0x" + f"{block:064x}", start + timedelta(seconds=12 * (block - first_block)),
               "0x" + f"{block:032x}{i:032x}", i % per_block, rng.choice(TOKENS),
               _topic(rng.choice(WALLET_ADDRESSES)), _topic(rng.choice(WALLET_ADDRESSES)),
               "0x" + f"{value:064x}"]
        for column, item in zip(columns, row, strict=True):
            column.append(item)
    return columns


async def _prepare(url: str) -> dict[str, Any]:
    """History (processed), triggers, and 100,000 unprocessed events in 100 statements."""
    rng = random.Random(7)
    conn = await asyncpg.connect(url)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        # 500 days of history, one statement per day: 500 daily chunks on a hypertable.
        for day in range(HISTORY_CHUNKS, 0, -1):
            columns = _rows(rng, 1_000_000 + day * 10, 10, now - timedelta(days=day + 2))
            await conn.execute(_INSERT, CHAIN_ID, TRANSFER_TOPIC, *columns)
        await conn.execute("UPDATE event_batches SET processed_at = now()")
        trigger_ids = []
        for n in range(WATCHED_ADDRESSES * TRIGGERS_PER_ADDRESS):
            conditions, _ = _conditions(n)
            trigger_ids.append(await conn.fetchval(
                """INSERT INTO triggers (name, chain_id, address, event_signature, conditions)
                   VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id""",
                f"bench-{n}", CHAIN_ID, TOKENS[n // TRIGGERS_PER_ADDRESS], TRANSFER,
                orjson.dumps(conditions).decode()))
        await conn.executemany(
            """INSERT INTO actions (trigger_id, config) VALUES
               ($1, '{"url": "https://example.com/hook"}')""", [(t,) for t in trigger_ids])
        start = now - timedelta(days=2)
        for statement in range(EVENTS // STATEMENT_ROWS):
            columns = _rows(rng, statement * STATEMENT_ROWS // 10, STATEMENT_ROWS,
                            start + timedelta(seconds=12 * statement * STATEMENT_ROWS // 10))
            await conn.execute(_INSERT, CHAIN_ID, TRANSFER_TOPIC, *columns)
        chunks = 0
        if await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
            chunks = await conn.fetchval("SELECT count(*) FROM timescaledb_information.chunks "
                                         "WHERE hypertable_name = 'events'")
        await conn.execute("CREATE TABLE bench_deliveries (LIKE deliveries INCLUDING ALL)")
        await conn.execute("VACUUM ANALYZE")
        return {"chunks": chunks}
    finally:
        await conn.close()


# --- the real path ---------------------------------------------------------------------------


async def _processor_run(url: str, redis_url: str) -> tuple[float, int, int]:
    pool = await create_pool(url, min_size=2, max_size=4, server_settings=POOL_SERVER_SETTINGS)
    client = redis.Redis.from_url(redis_url)
    try:
        processor = Processor(database_url=url, pool=pool, redis_client=client, batch_size=5000,
                              sweep_interval=3600)
        async with pool.acquire() as conn:
            await conn.execute("UPDATE event_batches SET processed_at = NULL "
                               "WHERE processed_at IS NOT NULL AND row_count = $1", STATEMENT_ROWS)
            await conn.execute("TRUNCATE deliveries")
        client.flushdb()
        stop = asyncio.Event()
        await processor.step(stop, sweep=False, reasons=set())  # loads triggers, drains
        async with pool.acquire() as conn:
            await conn.execute("UPDATE event_batches SET processed_at = NULL "
                               "WHERE processed_at IS NOT NULL AND row_count = $1", STATEMENT_ROWS)
            await conn.execute("TRUNCATE deliveries")
        client.flushdb()
        started = time.perf_counter()
        events = await processor.drain(stop)
        elapsed = time.perf_counter() - started
        async with pool.acquire() as conn:
            queued = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'queued'")
            assert await conn.fetchval("SELECT count(*) FROM deliveries") == queued
        return elapsed, events, queued
    finally:
        await pool.close()
        client.close()


# --- the raw baseline ------------------------------------------------------------------------


async def _baseline_run(url: str, redis_url: str) -> tuple[float, int, int]:
    conn = await asyncpg.connect(url)
    client = redis.Redis.from_url(redis_url)
    try:
        await conn.execute("UPDATE event_batches SET processed_at = NULL "
                           "WHERE row_count = $1", STATEMENT_ROWS)
        await conn.execute("TRUNCATE bench_deliveries")
        client.delete("bench:baseline")
        rows = await conn.fetch(
            "SELECT a.id AS action_id, t.id AS trigger_id, t.address, t.name FROM triggers t "
            "JOIN actions a ON a.trigger_id = t.id")
        lookup: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        for row in rows:
            _, threshold = _conditions(int(row["name"].split("-")[1]))
            lookup.setdefault((row["address"], TRANSFER_TOPIC), []).append(
                (row["action_id"], row["trigger_id"], threshold))
        started = time.perf_counter()
        events = created = 0
        while True:
            async with conn.transaction():
                batch = await conn.fetchrow(
                    "SELECT id, first_id, last_id, min_block_time, max_block_time FROM event_batches"
                    " WHERE processed_at IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
                if batch is None:
                    break
                found = await conn.fetch(
                    "SELECT id, address, topic0, data FROM events WHERE chain_id = $1 AND id "
                    "BETWEEN $2 AND $3 AND block_time BETWEEN $4 AND $5", CHAIN_ID,
                    batch["first_id"], batch["last_id"], batch["min_block_time"],
                    batch["max_block_time"])
                actions: list[int] = []
                triggers: list[int] = []
                event_ids: list[int] = []
                for event in found:
                    for action_id, trigger_id, threshold in lookup.get(
                            (event["address"], event["topic0"]), ()):
                        if int(event["data"][2:66], 16) >= threshold:
                            actions.append(action_id)
                            triggers.append(trigger_id)
                            event_ids.append(event["id"])
                ids = await conn.fetch(
                    "INSERT INTO bench_deliveries (action_id, trigger_id, event_id, kind) "
                    "SELECT a, t, e, 'matched' FROM unnest($1::bigint[], $2::bigint[], "
                    "$3::bigint[]) AS u(a, t, e) ON CONFLICT DO NOTHING RETURNING id",
                    actions, triggers, event_ids)
                await conn.execute("UPDATE event_batches SET processed_at = now() WHERE id = $1",
                                   batch["id"])
            with client.pipeline(transaction=False) as pipe:
                for i in range(0, len(ids), 50):
                    pipe.lpush("bench:baseline", ",".join(str(r["id"]) for r in ids[i:i + 50]))
                pipe.execute()
            events += len(found)
            created += len(ids)
        return time.perf_counter() - started, events, created
    finally:
        await conn.close()
        client.close()


# --- latency at a steady rate ----------------------------------------------------------------


async def _latency_run(url: str, redis_url: str) -> dict[str, float]:
    """Commit → enqueue at a steady rate. The start is the moment the writer's INSERT returned
    (its commit is durable and visible: what the guarantees call committed); the end is the
    ``queued_at`` the processor writes right after the RQ pipeline returned. The histogram's own
    definition (batch ``created_at`` = the writer's transaction start) is reported beside it."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE deliveries")
        await conn.execute("UPDATE event_batches SET processed_at = now()")
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING",
               "METRICS_PORT": "0", "PROCESSOR_SWEEP_INTERVAL": "2"}
        log = tempfile.TemporaryFile()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "processor", cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT)
        committed: list[float] = []
        first_block = 5_000_000
        blocks_per_tick = LATENCY_ROWS_PER_TICK // 10
        try:
            await asyncio.sleep(3)  # started, triggers loaded, listening
            rng = random.Random(11)
            start = datetime.now(UTC)
            ticks = int(LATENCY_SECONDS / LATENCY_TICK)
            origin = time.perf_counter()
            for tick in range(ticks):
                columns = _rows(rng, first_block + tick * blocks_per_tick,
                                LATENCY_ROWS_PER_TICK, start + timedelta(seconds=tick))
                await conn.execute(_INSERT, CHAIN_ID, TRANSFER_TOPIC, *columns)
                committed.append(time.time())
                await asyncio.sleep(max(0.0, origin + (tick + 1) * LATENCY_TICK - time.perf_counter()))
            await asyncio.sleep(2)
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
            log.close()
        rows = await conn.fetch(
            """SELECT e.block_number, extract(epoch FROM d.queued_at) AS queued,
                      extract(epoch FROM d.queued_at - d.event_committed_at) * 1000 AS metric_ms
               FROM deliveries d JOIN events e ON e.id = d.event_id
               WHERE d.status = 'queued' AND e.block_number >= $1""", first_block)
        latencies = sorted(
            (float(r["queued"]) - committed[(r["block_number"] - first_block) // blocks_per_tick])
            * 1000 for r in rows)
        metric = sorted(float(r["metric_ms"]) for r in rows)
        return {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99),
                "metric_p50": _percentile(metric, 0.5), "metric_p99": _percentile(metric, 0.99),
                "samples": len(latencies),
                "pending": await conn.fetchval(
                    "SELECT count(*) FROM deliveries WHERE status <> 'queued'")}
    finally:
        await conn.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def run(backend: str = "both") -> list[Figure]:
    configure_logging(level="WARNING")
    figures: list[Figure] = []
    redis_log = Path(tempfile.mkstemp(prefix="bh-bench-redis-", suffix=".log")[1])
    redis_server = RedisServer(log_path=redis_log)
    redis_server.start()
    try:
        with backends(backend) as selected:
            for target in selected:
                facts = asyncio.run(_prepare(target.url))
                best_base = best_real = 0.0
                for _ in range(RUNS):  # alternating, best of each: the machine is shared
                    base_s, base_events, base_created = asyncio.run(
                        _baseline_run(target.url, redis_server.url))
                    real_s, real_events, real_created = asyncio.run(
                        _processor_run(target.url, redis_server.url))
                    best_base = max(best_base, base_events / base_s)
                    best_real = max(best_real, real_events / real_s)
                note = (f"{target.name}; {real_events:,} events, {real_created:,} deliveries "
                        f"({real_created / max(real_events, 1):.1%}); baseline "
                        f"{base_created:,} rows; chunks {facts['chunks']}; best of {RUNS}; "
                        f"load avg {os.getloadavg()[0]:.1f}")
                figures.append(Figure(f"processor events/s [{target.name}]", best_real, "ev/s",
                                      baseline=best_base, bar=10_000, goal=20_000, note=note))
                latency = asyncio.run(_latency_run(target.url, redis_server.url))
                figures.append(Figure(
                    f"commit->enqueue p50 @1k ev/s [{target.name}]", latency["p50"], "ms",
                    bar=10, goal=5, higher_is_better=False,
                    note=f"{latency['samples']:,} deliveries, {latency['pending']} not queued; "
                         f"load avg {os.getloadavg()[0]:.1f}; "
                         f"from batch created_at (inside the ingest tx): {latency['metric_p50']:.2f} ms"))
                figures.append(Figure(
                    f"commit->enqueue p99 @1k ev/s [{target.name}]", latency["p99"], "ms",
                    bar=50, goal=25, higher_is_better=False,
                    note=f"from batch created_at (inside the ingest tx): {latency['metric_p99']:.2f} ms"))
                figures += run_hot(target.url, redis_server.url, backend=target.name,
                                   transfer=TRANSFER, transfer_topic=TRANSFER_TOPIC,
                                   in_process=_processor_run)
                # Last: it replaces the database's events and triggers with a factory family.
                figures += run_factory(target.url, redis_server.url, backend=target.name,
                                       in_process=_processor_run)
    finally:
        redis_server.stop()
        redis_log.unlink(missing_ok=True)
    return figures

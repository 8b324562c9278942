"""Thousands of triggers on one hot contract (part of ``bench.py processor``).

Data: 100,000 ERC20 ``Transfer`` events of one token, in 100 insert statements of 1,000 rows
(100 event batches); values uniform in [0, 1,000,000); ``to`` is one of 10,000 watched wallets
for 1 % of the events, a fresh address otherwise. The same events are processed under four
trigger sets, swapped between runs:

- **ranges**: 1,000 triggers, 500 of them on the hot token's ``Transfer`` with disjoint value
  ranges (``value >= 2000·i AND value < 2000·i + 200``: 10 % of events match one), the other
  500 on 100 other tokens with the throughput benchmark's mixed conditions;
- **eq**: 10,000 triggers ``to eq <own wallet>`` on the hot token's ``Transfer`` (1 % match);
- **ranges-10**, **eq-10**: the first 10 hot triggers of each, on the same events.

Each set is timed as users run it: ``python -m processor`` from process start (imports, trigger
load and index build included) until every batch is processed and every delivery queued in RQ,
best of ``RUNS``; its peak RSS (``VmHWM``) is printed. The in-process ``Processor.drain`` of the
throughput figure is measured beside it. Decode share: the same events evaluated in memory
under the registry's reference evaluator (every candidate decoded, every whole predicate —
the evaluator before the index) and under the index, profiled with pyinstrument; the share is
the time under ``core/abi/decode.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis
from pyinstrument import Profiler
from pyinstrument.frame import Frame

from core.db import connect
from processor.evaluate import evaluate_events
from processor.registry import TriggerRegistry, fetch_trigger_rows
from scripts.benchmarks.processes import peak_rss_mib
from scripts.benchmarks.report import Figure
from tests.support import databases

ROOT = Path(__file__).resolve().parents[2]
CHAIN_ID = 1
EVENTS = 100_000
STATEMENT_ROWS = 1_000
MAX_VALUE = 1_000_000
WALLETS = 10_000
EQ_SHARE = 0.01
RANGES = 500
RANGE_STEP, RANGE_WIDTH = 2_000, 200
OTHER_TOKENS, PER_OTHER_TOKEN = 100, 5
RUNS = 2
POLL_SECONDS = 0.005


def _address(prefix: int, n: int) -> str:
    return "0x" + f"{prefix:02x}" + f"{n:038x}"


HOT_TOKEN = _address(0xCC, 0)
WATCHED = [_address(0xDD, n) for n in range(WALLETS)]


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


def trigger_sets() -> dict[str, list[tuple[str, Any]]]:
    """(address, conditions) per workload; the first entries are the hot ones."""
    from scripts.benchmarks.processor import _conditions  # the throughput bench's mixed shapes

    ranges = [(HOT_TOKEN, {"all": [
        {"field": "value", "op": "gte", "value": RANGE_STEP * i},
        {"field": "value", "op": "lt", "value": str(RANGE_STEP * i + RANGE_WIDTH)}]})
        for i in range(RANGES)]
    mixed = [(_address(0xEE, n // PER_OTHER_TOKEN), _conditions(n)[0])
             for n in range(OTHER_TOKENS * PER_OTHER_TOKEN)]
    eq = [(HOT_TOKEN, {"field": "to", "op": "eq", "value": wallet}) for wallet in WATCHED]
    return {"ranges": ranges + mixed, "ranges-10": ranges[:10], "eq": eq, "eq-10": eq[:10]}


_INSERT = """
INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index,
                    address, topic0, topic1, topic2, data)
SELECT $1, u.block_number, u.block_hash, u.block_time, u.tx_hash, 0, u.log_index, $2, $3,
       u.topic1, u.topic2, u.data
FROM unnest($4::bigint[], $5::text[], $6::timestamptz[], $7::text[], $8::int[], $9::text[],
            $10::text[], $11::text[])
     AS u(block_number, block_hash, block_time, tx_hash, log_index, topic1, topic2, data)
"""

_SET_TRIGGERS = """
WITH t AS (
  INSERT INTO triggers (name, chain_id, address, event_signature, conditions)
  SELECT 'hot-' || u.n, $1, u.address, $2, u.conditions::jsonb
  FROM unnest($3::int[], $4::text[], $5::text[]) AS u(n, address, conditions)
  RETURNING id)
INSERT INTO actions (trigger_id, config) SELECT id, '{"url": "https://example.com/hook"}' FROM t
"""

_PROGRESS = """
SELECT (SELECT count(*) FROM event_batches WHERE processed_at IS NULL) AS unprocessed,
       (SELECT count(*) FROM deliveries WHERE status = 'pending') AS pending
"""


async def prepare(url: str, transfer: str, transfer_topic: str) -> None:
    rng = random.Random(18)
    conn = await asyncpg.connect(url)
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        for statement in range(EVENTS // STATEMENT_ROWS):
            columns: list[list[Any]] = [[] for _ in range(8)]
            for i in range(STATEMENT_ROWS):
                n = statement * STATEMENT_ROWS + i
                block = n // 10
                to = (rng.choice(WATCHED) if rng.random() < EQ_SHARE
                      else _address(0xAB, rng.getrandbits(150)))
                row = [block, "0x" + f"{block:064x}", start + timedelta(seconds=2 * block),
                       "0x" + f"{n:064x}", n % 10, _topic(_address(0xBB, rng.randrange(500))),
                       _topic(to), "0x" + f"{rng.randrange(MAX_VALUE):064x}"]
                for column, item in zip(columns, row, strict=True):
                    column.append(item)
            await conn.execute(_INSERT, CHAIN_ID, HOT_TOKEN, transfer_topic, *columns)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def set_triggers(url: str, transfer: str, triggers: list[tuple[str, Any]]) -> None:
    import orjson

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE triggers CASCADE")
        await conn.execute(_SET_TRIGGERS, CHAIN_ID, transfer, list(range(len(triggers))),
                           [address for address, _ in triggers],
                           [orjson.dumps(conditions).decode() for _, conditions in triggers])
    finally:
        await conn.close()


@dataclass
class Run:
    seconds: float
    events: int
    deliveries: int
    peak_rss_mib: float = float("nan")

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def from_process_start(url: str, redis_url: str) -> Run:
    """``python -m processor`` from spawn to nothing unprocessed and nothing pending."""
    conn = await asyncpg.connect(url)
    client = redis.Redis.from_url(redis_url)
    log = tempfile.TemporaryFile()
    try:
        await conn.execute("UPDATE event_batches SET processed_at = NULL")
        await conn.execute("TRUNCATE deliveries")
        client.flushdb()
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING",
               "METRICS_PORT": "0"}
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "processor", cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT)
        try:
            while True:
                progress = await conn.fetchrow(_PROGRESS)
                if progress["unprocessed"] == 0 and progress["pending"] == 0:
                    break
                if process.returncode is not None:
                    log.seek(0)
                    raise RuntimeError(f"processor exited: {log.read().decode()[-2000:]}")
                await asyncio.sleep(POLL_SECONDS)
            elapsed = time.perf_counter() - started
            peak = peak_rss_mib(process.pid)
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)
        queued = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'queued'")
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == queued
        return Run(elapsed, EVENTS, queued, peak)
    finally:
        log.close()
        client.close()
        await conn.close()


def _time_in(frame: Frame, suffix: str) -> float:
    """Time of the outermost frames of the file ``suffix`` (their callees included)."""
    if frame.file_path and frame.file_path.endswith(suffix):
        return float(frame.time)
    return sum(_time_in(child, suffix) for child in frame.children)


async def decode_shares(url: str) -> dict[str, tuple[float, float]]:
    """In-memory evaluation: {"before"|"after": (µs per event, share of time in decode)}.
    "before" evaluates every candidate's whole predicate, so it runs on the first events only
    (about two million predicate calls); "after" on all of them."""
    conn = await connect(url)
    try:
        registry = TriggerRegistry.build(await fetch_trigger_rows(conn))
        rows = await conn.fetch(
            "SELECT id, block_number, block_time, tx_hash, log_index, address, topic0, topic1, "
            "topic2, topic3, data FROM events ORDER BY id")
    finally:
        await conn.close()
    hot = len(registry.candidates(CHAIN_ID, HOT_TOKEN, rows[0]["topic0"]))
    shares = {}
    for label, reference in (("before", True), ("after", False)):
        sample = rows[:max(1_000, 2_000_000 // hot)] if reference else rows
        started = time.perf_counter()
        evaluate_events(sample, registry, chain_id=CHAIN_ID, checkpoint=None, reference=reference)
        per_event = (time.perf_counter() - started) / len(sample) * 1e6
        profiler = Profiler(interval=0.0005)
        profiler.start()
        evaluate_events(sample, registry, chain_id=CHAIN_ID, checkpoint=None, reference=reference)
        profiler.stop()
        root = profiler.last_session.root_frame() if profiler.last_session else None
        share = _time_in(root, "core/abi/decode.py") / root.time if root else float("nan")
        shares[label] = (per_event, share)
    return shares


def run_hot(url: str, redis_url: str, *, backend: str, transfer: str, transfer_topic: str,
            in_process: Any) -> list[Figure]:
    """Prepare a fresh database next to ``url``, run the four trigger sets, return figures.
    ``in_process(url, redis_url)`` is the throughput benchmark's timed ``Processor.drain``."""
    hot_url = databases.create_database(url, prefix="bh_bench_hot")
    figures: list[Figure] = []
    try:
        databases.alembic(hot_url, "upgrade", "head")
        asyncio.run(prepare(hot_url, transfer, transfer_topic))
        sets = trigger_sets()
        for hot, few in (("ranges", "ranges-10"), ("eq", "eq-10")):
            best: dict[str, Run] = {}
            drained: dict[str, float] = {}
            shares: dict[str, tuple[float, float]] = {}
            for _ in range(RUNS):  # alternating, best of each: the machine is shared
                for name in (few, hot):
                    asyncio.run(set_triggers(hot_url, transfer, sets[name]))
                    result = asyncio.run(from_process_start(hot_url, redis_url))
                    if name not in best or result.rate > best[name].rate:
                        best[name] = result
                    seconds, events, _ = asyncio.run(in_process(hot_url, redis_url))
                    drained[name] = max(drained.get(name, 0.0), events / seconds)
                    if name == hot and not shares:
                        shares = asyncio.run(decode_shares(hot_url))
            figures += _figures(hot, few, best, drained, shares, backend=backend,
                                triggers=len(sets[hot]))
    finally:
        databases.drop_database(hot_url)
    return figures


_TITLES = {"ranges": "500 range triggers on 1 contract+event (1,000 in all)",
           "eq": "10,000 'to eq' triggers on 1 contract+event"}


def _figures(hot: str, few: str, best: dict[str, Run], drained: dict[str, float],
             shares: dict[str, tuple[float, float]], *, backend: str, triggers: int) -> list[Figure]:
    load = f"load avg {os.getloadavg()[0]:.1f}"
    main, small = best[hot], best[few]
    ratio = main.rate / small.rate
    before, after = shares["before"], shares["after"]
    before_decode, after_decode = before[0] * before[1], after[0] * after[1]
    return [
        Figure(f"processor hot: {_TITLES[hot]}, from process start [{backend}]", main.rate,
               "ev/s", baseline=small.rate, bar=10_000, goal=50_000,
               note=f"baseline: the first 10 of them, same events; {main.events:,} events, "
                    f"{main.deliveries:,} deliveries ({small.deliveries:,} with 10) in "
                    f"{main.seconds:.2f} s ({small.seconds:.2f} s); peak RSS "
                    f"{main.peak_rss_mib:.0f} MiB ({small.peak_rss_mib:.0f}); best of {RUNS}; "
                    f"{load}"),
        Figure(f"processor hot: {hot} vs 10 triggers, from process start [{backend}]", ratio, "x",
               goal=0.5, note=f"{triggers:,} triggers vs 10"),
        Figure(f"processor hot: {hot}, in-process drain [{backend}]", drained[hot], "ev/s",
               baseline=drained[few], note=f"baseline: 10 triggers; best of {RUNS}; {load}"),
        Figure(f"processor hot: {hot}, decode time per event [{backend}]", after_decode, "us",
               baseline=before_decode, higher_is_better=False,
               note=f"baseline: the evaluator before the index (every candidate decoded, every "
                    f"whole predicate); share of evaluation time in decode before "
                    f"{before[1]:.1%} of {before[0]:,.1f} us/event, after {after[1]:.1%} of "
                    f"{after[0]:,.2f} us/event (in memory, pyinstrument)"),
    ]

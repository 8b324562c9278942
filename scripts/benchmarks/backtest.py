"""Backtest throughput over stored history, against the processor's raw evaluation loop.

Data: ``BENCH_BACKTEST_EVENTS`` (default 1,000,000) stored ERC20 ``Transfer`` events of one token
(every one a candidate of the trigger: the worst case for a backtest), 10 a block, with a
checkpoint above them, so the whole range is read from the database. The trigger has a
two-leaf condition (``value gte`` a threshold about 10 % of events pass, ``to ne`` a wallet), so
the backtest decodes every event for its per-condition counts.

- **backtest**: ``scripts/backtest.py``'s ``Backtest.run`` in-process (no progress bar): load the
  trigger, plan the segments, read the trigger's valid events page by page, evaluate with the
  processor's registry, count every condition leaf, keep the first matches;
- **raw**: the processor's evaluation loop on the same rows — the same pages read, then
  ``processor.evaluate.evaluate_events`` with the registry the processor builds (index, decode
  only when needed, compiled conditions), nothing else.

Both run twice, alternating; the best run of each counts. Figures in events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.db import connect  # noqa: E402
from core.settings import IngestSettings  # noqa: E402
from processor.backtest import BLOCK_PAGE  # noqa: E402
from processor.evaluate import evaluate_events  # noqa: E402
from processor.registry import TriggerRegistry, fetch_trigger_rows  # noqa: E402
from scripts.backtest import Backtest  # noqa: E402
from scripts.benchmarks.processor import TRANSFER, TRANSFER_TOPIC, backends  # noqa: E402
from scripts.benchmarks.report import Figure  # noqa: E402

CHAIN_ID = 1
TOKEN = "0x" + "ab" * 20
EVENTS = int(os.environ.get("BENCH_BACKTEST_EVENTS", "1000000"))
PER_BLOCK = 10
STATEMENT_ROWS = 20_000
MAX_VALUE = 1_000_000
WALLETS = ["0x" + f"{n:040x}" for n in range(1, 101)]
RUNS = 2

_INSERT = """
INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index,
                    address, topic0, topic1, topic2, data)
SELECT $1, u.n / 10, '0x' || lpad(to_hex(u.n / 10), 64, '0'), $2::timestamptz + (u.n / 10) * interval '12 seconds',
       '0x' || lpad(to_hex(u.n), 64, '0'), 0, (u.n % 10)::int, $3, $4, u.topic1, u.topic2, u.data
FROM unnest($5::bigint[], $6::text[], $7::text[], $8::text[]) AS u(n, topic1, topic2, data)"""

_LOAD = """
SELECT id, chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index, address,
       topic0, topic1, topic2, topic3, data
FROM events
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3 AND NOT invalidated AND topic0 = $4
  AND ($5::text[] IS NULL OR address = ANY($5::text[]))
ORDER BY block_number, log_index"""


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


async def _prepare(url: str) -> int:
    """The events, the checkpoint above them and the trigger; returns the last block."""
    rng = random.Random(11)
    conn = await asyncpg.connect(url)
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
        for first in range(0, EVENTS, STATEMENT_ROWS):
            numbers = list(range(first, min(first + STATEMENT_ROWS, EVENTS)))
            await conn.execute(
                _INSERT, CHAIN_ID, start, TOKEN, TRANSFER_TOPIC, numbers,
                [_topic(rng.choice(WALLETS)) for _ in numbers],
                [_topic(rng.choice(WALLETS)) for _ in numbers],
                ["0x" + f"{rng.randrange(MAX_VALUE):064x}" for _ in numbers])
        last_block = (EVENTS - 1) // PER_BLOCK
        await conn.execute("INSERT INTO checkpoints (chain_id, block_number, block_hash) "
                           "VALUES ($1, $2, $3)", CHAIN_ID, last_block, "0x" + "00" * 32)
        await conn.execute("UPDATE event_batches SET processed_at = now()")
        conditions = {"all": [{"field": "value", "op": "gte", "value": str(MAX_VALUE * 9 // 10)},
                              {"field": "to", "op": "ne", "value": WALLETS[0]}]}
        trigger_id = await conn.fetchval(
            """INSERT INTO triggers (name, chain_id, address, event_signature, conditions)
               VALUES ('bench-backtest', $1, $2, $3, $4::jsonb) RETURNING id""",
            CHAIN_ID, TOKEN, TRANSFER, orjson.dumps(conditions).decode())
        await conn.execute("""INSERT INTO actions (trigger_id, config)
                              VALUES ($1, '{"url": "https://example.com/hook"}')""", trigger_id)
        await conn.execute("VACUUM ANALYZE")
        return last_block
    finally:
        await conn.close()


async def _backtest_run(url: str, last_block: int) -> tuple[float, int]:
    args = argparse.Namespace(trigger="bench-backtest", from_block=0, to_block=last_block,
                              show=5)
    settings = IngestSettings(_env_file=None, database_url=url,  # type: ignore[call-arg]
                              rpc_url="http://127.0.0.1:9", chain_id=None, metrics_port=0)
    from rich.progress import Progress
    started = time.perf_counter()
    with Progress(disable=True) as progress:
        _, report = await Backtest(args, settings).run(progress)
    return time.perf_counter() - started, report.candidates


async def _raw_run(url: str, last_block: int) -> tuple[float, int]:
    conn = await connect(url)
    try:
        started = time.perf_counter()
        registry = TriggerRegistry.build(await fetch_trigger_rows(conn))
        events = 0
        for low in range(0, last_block + 1, BLOCK_PAGE):
            rows = await conn.fetch(_LOAD, CHAIN_ID, low, min(low + BLOCK_PAGE - 1, last_block),
                                    TRANSFER_TOPIC, [TOKEN])
            events += evaluate_events(rows, registry, chain_id=CHAIN_ID,
                                      checkpoint=last_block).events
        return time.perf_counter() - started, events
    finally:
        await conn.close()


def run(backend: str = "plain") -> list[Figure]:
    figures: list[Figure] = []
    with backends("plain" if backend == "both" else backend) as created:
        for chosen in created:
            print(f"{chosen.name}: storing {EVENTS:,} events…", flush=True)
            last_block = asyncio.run(_prepare(chosen.url))
            best_backtest = best_raw = float("inf")
            for _ in range(RUNS):
                seconds, events = asyncio.run(_backtest_run(chosen.url, last_block))
                assert events == EVENTS, (events, EVENTS)
                best_backtest = min(best_backtest, seconds)
                seconds, events = asyncio.run(_raw_run(chosen.url, last_block))
                assert events == EVENTS, (events, EVENTS)
                best_raw = min(best_raw, seconds)
            figures.append(Figure(
                f"backtest events/s, {EVENTS:,} stored ({chosen.name})", EVENTS / best_backtest,
                "ev/s", baseline=EVENTS / best_raw,
                note="scripts/backtest.py's run (read + processor matching + per-condition "
                     "counts); baseline: the same reads + processor.evaluate.evaluate_events"))
    return figures

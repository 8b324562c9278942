"""Ingest throughput while a retention pass deletes 1M events, against the same ingest with no
pass, same chain, same database, same run.

Each backend's database holds 1,000,000 old events of another chain (block times 70 to 60 days
ago: ten 1-day chunks on TimescaleDB; their batches processed), so the default
``RETENTION_EVENTS=30d`` makes all of them due. Then, alternating, best of ``RUNS`` each:

- **alone**: the real indexer (``ingest.poller.Indexer``, as in the ingest benchmark) backfills
  the dense devnet chain (200,000 logs in 1,002 blocks) from block 0 to its head;
- **during retention**: ``python scripts/retention.py`` is started as users start it (its own
  process, its own database session); once it has begun deleting, the same backfill runs. The
  pass deletes the 1M rows with its batched DELETEs (plain Postgres) or drops their chunks
  (TimescaleDB). Whether the pass was still running when the backfill ended is reported: on
  plain Postgres it must cover the whole backfill for the figure to mean anything.

The old rows are loaded again before every run (a pass removes them). Figures: the backfill's
logs/s during the pass, with the alone rate of the same run as its baseline (goal 0.8x), and the
pass's own deletion rate (rows/s, informational).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.logging import configure_logging  # noqa: E402
from scripts.benchmarks.ingest import _reset, _stored, backends, build_chain, run_indexer  # noqa: E402
from scripts.benchmarks.report import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OLD_ROWS = 1_000_000
OLD_CHAIN = 999
RUNS = 2
START_TIMEOUT = 60.0


async def _load_old_rows(url: str) -> None:
    """1M events of chain 999, 70..60 days old, in one statement (one processed batch)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM events WHERE chain_id = $1", OLD_CHAIN)
        await conn.execute(
            """INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash,
                                   tx_index, log_index, address, topic0, topic1, data)
               SELECT $1, g / 10, '0x' || lpad(to_hex(g / 10), 64, '0'),
                      now() - interval '70 days' + make_interval(secs => g * 0.864),
                      '0x' || lpad(to_hex(g), 64, 'f'), 0, g % 10, '0x' || repeat('ab', 20),
                      '0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef',
                      '0x' || repeat('0', 24) || repeat('cd', 20), '0x' || repeat('0', 64)
               FROM generate_series(0, $2 - 1) AS g""", OLD_CHAIN, OLD_ROWS)
        await conn.execute("UPDATE event_batches SET processed_at = now() WHERE processed_at IS NULL")
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


async def _old_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE chain_id = $1", OLD_CHAIN))
    finally:
        await conn.close()


@dataclass
class PassRun:
    ingest_seconds: float
    pass_seconds: float
    deleted: int
    covered: bool  # the pass was still running when the backfill ended


def _start_pass(url: str) -> subprocess.Popen[str]:
    """``python scripts/retention.py --json`` with the default settings (30 days of events)."""
    env = {**os.environ, "DATABASE_URL": url, "RETENTION_EVENTS": "30d", "LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "scripts/retention.py", "--json"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _backfill_during_pass(url: str, rpc_url: str, head: int) -> PassRun:
    started = time.perf_counter()
    process = _start_pass(url)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while await _old_rows(url) == OLD_ROWS:  # wait until the pass has begun deleting
            if process.poll() is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        ingest_seconds = await run_indexer(url, rpc_url, head)
        covered = process.poll() is None
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    if process.returncode != 0:
        raise RuntimeError(f"retention pass failed ({process.returncode}): {stderr}")
    result = json.loads(stdout)
    return PassRun(ingest_seconds=ingest_seconds, pass_seconds=time.perf_counter() - started,
                   deleted=result["deleted"]["events"], covered=covered)


def run(backend: str = "both") -> list[Figure]:
    configure_logging(level="WARNING")
    node, total_logs = build_chain()
    head = node.head()
    figures: list[Figure] = []
    try:
        with backends(backend) as selected:
            for db in [b for b in selected if b.name in ("plain", "timescale")]:
                alone: list[float] = []
                during: list[PassRun] = []
                for _ in range(RUNS):
                    asyncio.run(_reset(db.url))
                    alone.append(asyncio.run(run_indexer(db.url, node.url, head)))
                    asyncio.run(_reset(db.url))
                    asyncio.run(_load_old_rows(db.url))
                    during.append(asyncio.run(_backfill_during_pass(db.url, node.url, head)))
                    stored = asyncio.run(_stored(db.url))
                    left = asyncio.run(_old_rows(db.url))
                    if stored != total_logs or left != 0:
                        raise RuntimeError(f"stored {stored} of {total_logs} logs, {left} old rows left")
                best = min(during, key=lambda r: r.ingest_seconds)
                alone_rate = total_logs / min(alone)
                note = (f"{total_logs:,} logs; the pass deleted {best.deleted:,} rows in "
                        f"{best.pass_seconds:.1f} s, "
                        + ("still running when the backfill ended" if best.covered
                           else "ended before the backfill (partial overlap)"))
                figures.append(Figure(f"ingest while retention deletes 1M rows [{db.name}]",
                                      total_logs / best.ingest_seconds, "logs/s",
                                      baseline=alone_rate, bar=0.5 * alone_rate,
                                      goal=0.8 * alone_rate, note=note))
                figures.append(Figure(f"retention pass, 1M events due [{db.name}]",
                                      best.deleted / best.pass_seconds, "rows/s",
                                      note="scripts/retention.py from process start, beside "
                                           "the backfill"))
    finally:
        node.stop()
    return figures

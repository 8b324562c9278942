"""Ingest throughput while a retention pass deletes 1M events, against the same ingest with no
pass, same chain, same database, same run.

Each backend's database holds 1,000,000 old events of another chain (block times 70 to 60 days
ago: ten 1-day chunks on TimescaleDB; their batches processed), so the default
``RETENTION_EVENTS=30d`` makes all of them due. Then, alternating, best of ``RUNS`` each:

- **alone**: the real indexer (``ingest.poller.Indexer``, as in the ingest benchmark) backfills
  the dense devnet chain (200,000 logs in 1,002 blocks) from block 0 to its head;
- **during retention**: the same backfill, and once a fifth of it is stored, a retention pass
  starts in a process of its own that was already running (as in a processor: what is measured
  is the pass, not an interpreter starting), with ``scripts/retention.py``'s own pass function
  and pacing. The pass deletes the 1M rows with its batched DELETEs (plain Postgres) or drops
  their chunks (TimescaleDB). How the two overlapped is reported: on plain Postgres the pass
  should still be running when the backfill ends.

The old rows are loaded again before every run (a pass removes them). Figures: the backfill's
logs/s during the pass, with the alone rate of the same run as its baseline (goal 0.8x); the
pass's own deletion rate (rows/s); and, for sizing, the bytes one event takes on each backend
(1M Transfer-shaped rows — 3 topics, 32 bytes of data — in a fresh table, indexes included) and
the bytes one delivery row takes (informational).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
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


# A warm runner: imports and settings done, it waits for a line on stdin, then runs one whole
# paced pass with the default policy (RETENTION_EVENTS=30d) and prints what it did.
_RUNNER = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[2])
from rich.console import Console
from core.logging import configure_logging
from retention.policy import RetentionPolicy
from retention.runner import RetentionRunner
from scripts.retention import run_pass
configure_logging(level="WARNING")
print("ready", flush=True)
sys.stdin.readline()
report, seconds = asyncio.run(run_pass(sys.argv[1], RetentionRunner(RetentionPolicy()),
                                       pause=True, console=Console(stderr=True)))
print(json.dumps({"deleted": report.deleted["events"], "seconds": seconds}), flush=True)
"""


def _start_runner(url: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", _RUNNER, url, str(ROOT)], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("the retention runner did not start")
    return process


async def _backfill_during_pass(url: str, rpc_url: str, head: int, total_logs: int) -> PassRun:
    runner = _start_runner(url)
    assert runner.stdin is not None and runner.stdout is not None
    try:
        backfill = asyncio.ensure_future(run_indexer(url, rpc_url, head))
        started = False
        while not started and not backfill.done():
            if await _stored(url) >= total_logs // 5:
                runner.stdin.write("go\n")
                runner.stdin.flush()
                started = True
            await asyncio.sleep(0.02)
        ingest_seconds = await backfill
        if not started:
            raise RuntimeError("the backfill ended before the pass could start")
        covered = runner.poll() is None
        line = await asyncio.to_thread(runner.stdout.readline)
        await asyncio.to_thread(runner.wait, 600)
    finally:
        if runner.poll() is None:
            runner.kill()
    if runner.returncode != 0 or not line:
        raise RuntimeError(f"retention pass failed ({runner.returncode})")
    result = json.loads(line)
    return PassRun(ingest_seconds=ingest_seconds, pass_seconds=result["seconds"],
                   deleted=result["deleted"], covered=covered)


async def _bytes_per_row(url: str, *, table: str, size_sql: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"VACUUM ANALYZE {table}")
        rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return float(await conn.fetchval(size_sql)) / rows
    finally:
        await conn.close()


async def _load_deliveries(url: str, count: int) -> None:
    """``count`` delivered webhooks of one trigger, shaped as the workers leave them."""
    conn = await asyncpg.connect(url)
    try:
        trigger_id = await conn.fetchval(
            """INSERT INTO triggers (name, chain_id, event_signature)
               VALUES ('sizing', 1, 'Transfer(address indexed from, address indexed to, uint256 value)')
               RETURNING id""")
        action_id = await conn.fetchval(
            """INSERT INTO actions (trigger_id, config)
               VALUES ($1, '{"url": "https://example.com/hook"}') RETURNING id""", trigger_id)
        await conn.execute(
            """INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status, attempts,
                                       last_status_code, event_committed_at, queued_at,
                                       delivered_at, latency_ms)
               SELECT $1, $2, g, 'matched', 'delivered', 1, 200, now(), now(), now(), 12.5
               FROM generate_series(1, $3) AS g""", action_id, trigger_id, count)
    finally:
        await conn.close()


def run(backend: str = "both") -> list[Figure]:
    configure_logging(level="WARNING")
    node, total_logs = build_chain()
    head = node.head()
    figures: list[Figure] = []
    try:
        with backends(backend) as selected:
            for db in [b for b in selected if b.name in ("plain", "timescale")]:
                asyncio.run(_load_old_rows(db.url))  # a fresh table: bytes per row for sizing
                size_sql = ("SELECT hypertable_size('events')" if db.name == "timescale"
                            else "SELECT pg_total_relation_size('events')")
                figures.append(Figure(f"sizing: bytes per event [{db.name}]", asyncio.run(
                    _bytes_per_row(db.url, table="events", size_sql=size_sql)), "B/row",
                    note="Transfer-shaped: 3 topics, 32 bytes of data; heap, indexes, TOAST"))
                if db.name == "plain":
                    asyncio.run(_load_deliveries(db.url, 100_000))
                    figures.append(Figure("sizing: bytes per delivery", asyncio.run(
                        _bytes_per_row(db.url, table="deliveries",
                                       size_sql="SELECT pg_total_relation_size('deliveries')")),
                        "B/row", note="a delivered webhook; attempt history is on the row"))
                alone: list[float] = []
                during: list[PassRun] = []
                for _ in range(RUNS):
                    asyncio.run(_reset(db.url))
                    alone.append(asyncio.run(run_indexer(db.url, node.url, head)))
                    asyncio.run(_reset(db.url))
                    asyncio.run(_load_old_rows(db.url))
                    during.append(asyncio.run(_backfill_during_pass(db.url, node.url, head,
                                                                    total_logs)))
                    stored = asyncio.run(_stored(db.url))
                    left = asyncio.run(_old_rows(db.url))
                    if stored != total_logs or left != 0:
                        raise RuntimeError(f"stored {stored} of {total_logs} logs, {left} old rows left")
                best = min(during, key=lambda r: r.ingest_seconds)
                alone_rate = total_logs / min(alone)
                note = (f"{total_logs:,} logs; the pass started at a fifth of the backfill and "
                        f"deleted {best.deleted:,} rows in {best.pass_seconds:.1f} s, "
                        + ("still running when the backfill ended" if best.covered
                           else "ending within the backfill"))
                figures.append(Figure(f"ingest while retention deletes 1M rows [{db.name}]",
                                      total_logs / best.ingest_seconds, "logs/s",
                                      baseline=alone_rate, bar=0.5 * alone_rate,
                                      goal=0.8 * alone_rate, note=note))
                figures.append(Figure(f"retention pass, 1M events due [{db.name}]",
                                      best.deleted / best.pass_seconds, "rows/s",
                                      note="a whole paced pass, beside the backfill"))
    finally:
        node.stop()
    return figures

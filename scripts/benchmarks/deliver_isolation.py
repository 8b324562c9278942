"""Endpoint isolation, part of ``python scripts/bench.py deliver``: the latency of webhooks to a
healthy endpoint while another endpoint hangs with ``HANG_QUEUED`` deliveries queued, against
the same stream with no hanging endpoint, in the same run and the same worker process.

One ``python -m workers`` process with default settings (``WEBHOOK_TIMEOUT`` 10 s,
``WORKER_ENDPOINT_CONCURRENCY`` 10). Two receivers in their own processes (fast mode): a healthy
one, and one that never answers.

- Capacity: ``CAPACITY_JOBS`` healthy deliveries enqueued at once, one job each; the worker's
  rate from the first enqueue to the last arrival is its ceiling for single-delivery jobs (RQ's
  bookkeeping is ~60 Redis commands per job: ~8 ms of CPU per job on the 2-core sandbox).
- Phase 1: ``STREAM`` healthy deliveries, one job each, at ``RATE`` per second; latency = the
  receiver's arrival time − the enqueue time. ``RATE`` is about half that ceiling here: the
  figure is about isolation, and a stream at the ceiling measures queueing noise instead (at
  100/s this machine's p99 swung from 0.1 to 0.8 s with nothing hanging).
- Phase 2: the ``HANG_QUEUED`` deliveries to the hanging endpoint are enqueued (jobs of 200, as
  the processor does); once the worker has taken their jobs (its first requests hang, the others
  wait, all of them still ``queued``), the same stream again. It lasts twice the endpoint's 10 s
  timeout: the hanging requests time out during it and the endpoint's circuit opens. (1,000
  webhooks a phase: the p99 is the 10th slowest, steadier than the 5th of 500 at these
  millisecond latencies.)

Figure: p99 of phase 2 against p99 of phase 1 (goal ≤ 1.5x).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import redis
from psycopg.types.json import Jsonb

from core.queue import delivery_queue, enqueue_deliveries
from scripts.benchmarks.report import Figure
from tests.support.receiver import Receiver, Step

ROOT = Path(__file__).resolve().parents[2]
HANG_QUEUED = 2_000
STREAM = 1000
RATE = 50.0
CAPACITY_JOBS = 300
GOAL_RATIO = 1.5
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
TOPIC0 = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _seed(db_url: str, *, healthy_url: str, hang_url: str, secret: str) -> tuple[list[int],
                                                                                  list[int]]:
    """``2 * STREAM + CAPACITY_JOBS`` deliveries to the healthy endpoint and ``HANG_QUEUED`` to
    the hanging one,
    all ``queued`` and not enqueued yet. Returns (healthy ids, hanging ids)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        trigger_id = conn.execute(
            "INSERT INTO triggers (name, chain_id, event_signature) VALUES ('isolation', 31337, "
            "%s) RETURNING id", (TRANSFER,)).fetchone()[0]  # type: ignore[index]
        actions = [conn.execute(
            "INSERT INTO actions (trigger_id, config) VALUES (%s, %s) RETURNING id",
            (trigger_id, Jsonb({"url": url, "secret": secret}))).fetchone()[0]  # type: ignore[index]
            for url in (healthy_url, hang_url)]
        total = 2 * STREAM + CAPACITY_JOBS + HANG_QUEUED
        first = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]  # type: ignore[index]
        conn.execute(f"""
            INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index,
                                log_index, address, topic0, topic1, topic2, data)
            SELECT 31337, 1000000 + g / 100, '0x' || lpad(to_hex(1000000 + g / 100), 64, '0'),
                   now(), '0x' || lpad(to_hex(1000000 + g), 64, '0'), 0, g % 100,
                   '0x5fbdb2315678afecb367f032d93f642f64180aa3', '{TOPIC0}',
                   '0x' || lpad('11', 64, '0'), '0x' || lpad(to_hex(g), 64, '0'),
                   '0x' || lpad(to_hex(g * 1000), 64, '0')
            FROM generate_series(1, {total}) AS g""")
        event_ids = [row[0] for row in conn.execute(
            "SELECT id FROM events WHERE id > %s ORDER BY id", (first,)).fetchall()]
        ids: list[list[int]] = []
        healthy = 2 * STREAM + CAPACITY_JOBS
        for action_id, chunk in ((actions[0], event_ids[:healthy]),
                                 (actions[1], event_ids[healthy:])):
            ids.append([row[0] for row in conn.execute(
                """INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status,
                                           queued_at)
                   SELECT %s, %s, e, 'matched', 'queued', now() FROM unnest(%s::bigint[]) AS e
                   ORDER BY e RETURNING id""", (action_id, trigger_id, chunk)).fetchall()])
        conn.execute("VACUUM ANALYZE deliveries")
    return ids[0], ids[1]


def _stream(client: redis.Redis, receiver: Receiver, ids: list[int]) -> list[float]:
    """Enqueue ``ids`` one job each at ``RATE``/s; return each one's latency (seconds)."""
    sent: dict[str, float] = {}
    started = time.perf_counter()
    for n, delivery_id in enumerate(ids):
        pause = started + n / RATE - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        sent[f"dlv_{delivery_id}"] = time.time()
        enqueue_deliveries(client, [delivery_id])
    seen = _arrivals(receiver, set(sent), within=60)
    # A delivery that never arrived counts as a minute (it fails the goal visibly).
    return sorted(seen[key] - at if key in seen else 60.0 for key, at in sent.items())


def _arrivals(receiver: Receiver, wanted: set[str], *, within: float) -> dict[str, float]:
    """Arrival times of the ``wanted`` webhook ids, once all arrived or ``within`` seconds
    passed (then only those that did)."""
    deadline = time.monotonic() + within
    while True:
        seen = {r.webhook_id: r.received_at for r in receiver.received()
                if r.webhook_id in wanted}
        if len(seen) >= len(wanted) or time.monotonic() > deadline:
            return seen  # type: ignore[return-value]
        time.sleep(0.05)


def _capacity(client: redis.Redis, receiver: Receiver, ids: list[int]) -> float:
    """Single-delivery jobs per second the worker sustains: ``ids`` enqueued at once, one job
    each; the rate from the first enqueue to the last arrival."""
    started = time.time()
    for delivery_id in ids:
        enqueue_deliveries(client, [delivery_id])
    arrived = _arrivals(receiver, {f"dlv_{delivery_id}" for delivery_id in ids}, within=120)
    if len(arrived) < len(ids):
        raise RuntimeError(f"{len(arrived)}/{len(ids)} capacity webhooks arrived in 120 s")
    return len(ids) / (max(arrived.values()) - started)


def _p99(latencies: list[float]) -> float:
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def run(db_url: str, redis_url: str, secret: str) -> list[Figure]:
    client = redis.Redis.from_url(redis_url)
    worker: subprocess.Popen[bytes] | None = None
    try:
        with Receiver(fast=True) as healthy, Receiver(fast=True) as hanging:
            hanging.script(Step(status=200, hang=3600, times=1_000_000))
            healthy_ids, hang_ids = _seed(db_url, healthy_url=healthy.url, hang_url=hanging.url,
                                          secret=secret)
            env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
                   "WEBHOOK_ALLOW_PRIVATE": "true", "LOG_LEVEL": "WARNING",
                   "METRICS_PORT": "0"}
            worker = subprocess.Popen([sys.executable, "-m", "workers"], cwd=ROOT, env=env,
                                      stderr=subprocess.DEVNULL)
            # Warm up (interpreter, pool, keep-alive connection) outside the measurement.
            _stream(client, healthy, healthy_ids[:5])
            capacity = _capacity(client, healthy, healthy_ids[2 * STREAM:])
            alone = _stream(client, healthy, healthy_ids[5:STREAM])
            enqueue_deliveries(client, hang_ids)
            hanging.wait_for(1, timeout=30)
            queue = delivery_queue(client)
            deadline = time.monotonic() + 30
            while queue.count and time.monotonic() < deadline:
                time.sleep(0.01)  # every hanging delivery handed to the worker
            beside = _stream(client, healthy, healthy_ids[STREAM:])
            in_flight_to_hang = hanging.count()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        client.close()
    alone_p99, beside_p99 = _p99(alone), _p99(beside)
    return [
        Figure("deliver: single-delivery jobs/s, one worker", capacity, "jobs/s",
               note=f"{CAPACITY_JOBS} jobs of one delivery enqueued at once; the isolation "
                    f"stream runs at {RATE:.0f}/s = {RATE / capacity:.0%} of it"),
        Figure("deliver: healthy p99, no other endpoint", alone_p99 * 1000, "ms",
               higher_is_better=False,
               note=f"{len(alone)} webhooks, one job each at {RATE:.0f}/s, one worker process"),
        Figure("deliver: healthy p99 beside a hanging endpoint", beside_p99 * 1000, "ms",
               baseline=alone_p99 * 1000, higher_is_better=False,
               goal=alone_p99 * 1000 * GOAL_RATIO,
               note=f"{HANG_QUEUED} deliveries queued to an endpoint that never answers "
                    f"({in_flight_to_hang} requests reached it); goal <= {GOAL_RATIO}x the "
                    f"no-hang p99; median {beside[len(beside) // 2] * 1000:.1f} ms vs "
                    f"{alone[len(alone) // 2] * 1000:.1f} ms"),
    ]

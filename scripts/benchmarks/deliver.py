"""Webhook delivery throughput: ``python scripts/bench.py deliver``.

``DELIVERIES`` queued deliveries (one ERC20 Transfer event each, signed with a ``whsec_`` secret)
in a throwaway database on the local server, migrated with the real alembic; jobs enqueued the
way the processor does (``core.queue.enqueue_deliveries``); ``WORKERS`` real ``python -m workers
--burst`` processes; wall time from starting the workers until every row is ``delivered``. The
endpoint is the test receiver in its own process, in fast mode (records ids, no verification) so
that it measures the sender, not the verifier.

Baseline, same run, same receiver: a raw aiohttp keep-alive POST loop (one process, the same
concurrency as one worker batch, a body of the same size; the workers' per-endpoint cap is set to
that concurrency, since the one receiver stands for many endpoints) — the rate at which this
machine can POST to that receiver at all. It runs before and after the workers and the higher
rate is the baseline (the machine is shared and its load moves during a run; the higher rate is
the stricter baseline). The ratio is the price of the record (leases, outcomes, signatures, RQ).

Why 50,000 deliveries: a worker process spends ~1 s of CPU on this 2-core machine before its first
job (interpreter, imports, connections). With 10,000 deliveries the two start-ups were a third of
the workers' CPU and of the wall time, so the figure said more about start-up than about
delivering; with 50,000 they are a small part, and the run still takes only ~15-25 s. Start-up is
not hidden: the wall figure counts from spawning the workers, the worker CPU figure includes
their start-up, and "first to last 2xx" is the steady rate alone. The peak RSS of the larger
worker is reported too (what a bigger run costs in memory).

Then the endpoint-isolation figures (:mod:`scripts.benchmarks.deliver_isolation`): p99 to a
healthy endpoint beside one that hangs with 2,000 deliveries queued, against no hang.

Redis: a redis-server of the benchmark's own (``tests.e2e.redis_server``), so that nobody
else's workers or flushes share its queue. Postgres: ``DATABASE_URL``/``TEST_DATABASE_URL``'s server (default the local one). The
``--backend`` choice is ignored: deliveries read one event per row by id, which does not depend
on the storage path.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import psycopg
import redis
from psycopg.types.json import Jsonb

from core.queue import enqueue_deliveries
from scripts.benchmarks import deliver_isolation
from scripts.benchmarks.processes import peak_rss_mib
from scripts.benchmarks.report import Figure
from tests.e2e.redis_server import RedisServer
from tests.support import databases
from tests.support.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
DELIVERIES = 50_000  # see the module docstring
WORKERS = 2
BASELINE_POSTS = 10_000
HTTPX_POSTS = 3_000
BAR = 1_000.0
GOAL = 2_500.0
IN_FLIGHT = 50  # the raw loops' concurrency: one worker's batch (WORKER_BATCH_SIZE default)
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
TOPIC0 = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _server_url() -> str:
    url = (os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
           or "postgresql://postgres@127.0.0.1:5432/postgres")
    return url.replace("postgres://", "postgresql://", 1)


def _seed(db_url: str, hook_url: str, secret: str) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        trigger_id = conn.execute(
            "INSERT INTO triggers (name, chain_id, event_signature) VALUES ('bench', 31337, %s) "
            "RETURNING id", (TRANSFER,)).fetchone()[0]  # type: ignore[index]
        action_id = conn.execute(
            "INSERT INTO actions (trigger_id, config) VALUES (%s, %s) RETURNING id",
            (trigger_id, Jsonb({"url": hook_url, "secret": secret}))).fetchone()[0]  # type: ignore[index]
        conn.execute(f"""
            INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index,
                                log_index, address, topic0, topic1, topic2, data)
            SELECT 31337, g / 100, '0x' || lpad(to_hex(g / 100), 64, '0'), now(),
                   '0x' || lpad(to_hex(g), 64, '0'), 0, g % 100,
                   '0x5fbdb2315678afecb367f032d93f642f64180aa3', '{TOPIC0}',
                   '0x' || lpad('11', 64, '0'), '0x' || lpad(to_hex(g), 64, '0'),
                   '0x' || lpad(to_hex(g * 1000), 64, '0')
            FROM generate_series(1, {DELIVERIES}) AS g""")
        rows = conn.execute(
            """INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status, queued_at)
               SELECT %s, %s, id, 'matched', 'queued', now() FROM events ORDER BY id
               RETURNING id""", (action_id, trigger_id)).fetchall()
        conn.execute("VACUUM ANALYZE deliveries")
        conn.execute("VACUUM ANALYZE events")
    return [row[0] for row in rows]


def _delivered(db_url: str) -> tuple[int, float | None]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        count, span = conn.execute(
            "SELECT count(*), extract(epoch FROM max(delivered_at) - min(delivered_at)) "
            "FROM deliveries WHERE status = 'delivered'").fetchone()  # type: ignore[misc]
    return int(count), float(span) if span is not None else None


async def _raw_posts(url: str, body: bytes, total: int, concurrency: int) -> float:
    """POSTs per second of a bare aiohttp keep-alive client, ``concurrency`` in flight."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        remaining = total

        async def one() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.post(url, data=body,
                                        headers={"content-type": "application/json"}) as reply:
                    await reply.read()
                    assert reply.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def _httpx_posts(url: str, body: bytes, total: int, concurrency: int) -> float:
    """The same loop with httpx's async client: the library comparison behind the choice."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        remaining = total

        async def one() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                reply = await client.post(url, content=body,
                                          headers={"content-type": "application/json"})
                assert reply.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def _wait_until_none_open(db_url: str, workers: list[subprocess.Popen[bytes]],
                          peaks: dict[int, float]) -> None:
    """Return once no delivery is open (pending or queued), polling every 50 ms on one
    connection with a query the partial index ``ix_deliveries_open`` answers. (Polling with
    ``count(*)`` over the whole table on a new connection each time cost Postgres a sizeable
    share of a core at 50,000 rows: CPU taken from the workers on this 2-core machine, and not
    from the raw loop, which runs with nothing polling. Even this query costs ~0.7 ms once the
    index holds the dead entries of delivered rows: every 20 ms that was ~3 % of a core.)
    Each worker's peak RSS so far goes to ``peaks`` (pid → MiB) on every poll."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            for worker in workers:
                peak = peak_rss_mib(worker.pid)
                if not math.isnan(peak):
                    peaks[worker.pid] = max(peaks.get(worker.pid, 0.0), peak)
            if not conn.execute("SELECT EXISTS (SELECT 1 FROM deliveries WHERE status IN "
                                "('pending', 'queued'))").fetchone()[0]:  # type: ignore[index]
                return
            if all(_exited(w) for w in workers):
                errors = b"".join(w.stderr.read() for w in workers if w.stderr)
                raise RuntimeError(f"workers exited with deliveries still open: "
                                   f"{errors.decode(errors='replace')[-2000:]}")
            time.sleep(0.05)


def _exited(worker: subprocess.Popen[bytes]) -> bool:
    """Whether ``worker`` has exited, without reaping it (:func:`_reap` reads its rusage)."""
    return os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _reap(workers: list[subprocess.Popen[bytes]]) -> float:
    """Wait for the burst workers to exit; return their CPU seconds (user + sys, summed), from
    each process's own rusage. (Not its ``ru_maxrss``: see
    :func:`scripts.benchmarks.processes.peak_rss_mib`.)"""
    cpu = 0.0
    deadline = time.monotonic() + 60
    for worker in workers:
        while True:
            pid, status, usage = os.wait4(worker.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("a worker did not exit within 60 s of the last delivery")
            time.sleep(0.01)
        worker.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
    return cpu


def run(backend: str = "plain") -> list[Figure]:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    redis_log = Path(tempfile.mkstemp(prefix="bh-bench-redis-", suffix=".log")[1])
    redis_server = RedisServer(log_path=redis_log)
    redis_server.start()
    redis_url = redis_server.url
    client = redis.Redis.from_url(redis_url)
    db_url = databases.create_database(_server_url(), prefix="bh_bench")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        databases.alembic(db_url, "upgrade", "head")
        with Receiver(fast=True) as receiver:
            ids = _seed(db_url, receiver.url, secret)
            body = b'{"type":"event.matched","delivery_id":1,' + b"x" * 520 + b"}"
            raw_before = asyncio.run(_raw_posts(receiver.url, body, BASELINE_POSTS, IN_FLIGHT))
            httpx_rate = asyncio.run(_httpx_posts(receiver.url, body, HTTPX_POSTS, IN_FLIGHT))
            receiver.reset()

            enqueue_deliveries(client, ids)
            # One receiver stands for many endpoints: the per-endpoint cap is raised to the raw
            # loop's concurrency, so both send with the same number of requests in flight.
            env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
                   "WEBHOOK_ALLOW_PRIVATE": "true", "LOG_LEVEL": "WARNING", "METRICS_PORT": "0",
                   "WORKER_ENDPOINT_CONCURRENCY": str(IN_FLIGHT)}
            started = time.perf_counter()
            workers = [subprocess.Popen([sys.executable, "-m", "workers", "--burst"], cwd=ROOT,
                                        env=env, stderr=subprocess.PIPE)
                       for _ in range(WORKERS)]
            peaks: dict[int, float] = {}
            _wait_until_none_open(db_url, workers, peaks)
            wall = time.perf_counter() - started
            count, _ = _delivered(db_url)
            if count != len(ids):
                raise RuntimeError(f"{count}/{len(ids)} delivered; the others failed")
            worker_cpu = _reap(workers)
            peak_rss = max(peaks.values(), default=math.nan)
            _, span = _delivered(db_url)
            posts = receiver.count()
            # The raw loop again, after the workers: on a shared machine the load changes
            # during a run, and the higher of the two rates is the baseline (the stricter one).
            raw_after = asyncio.run(_raw_posts(receiver.url, body, BASELINE_POSTS, IN_FLIGHT))
            baseline = max(raw_before, raw_after)
        isolation = deliver_isolation.run(db_url, redis_url, secret)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        databases.drop_database(db_url)
        client.close()
        redis_server.stop()
        redis_log.unlink(missing_ok=True)
    rate = len(ids) / wall
    steady = len(ids) / span if span else rate
    return [
        Figure("deliver: deliveries/s (2 workers, wall)", rate, "dlv/s", baseline=baseline,
               bar=BAR, goal=GOAL, note=f"{len(ids)} deliveries in {wall:.2f} s incl. worker start; "
                             f"goal >= {GOAL:,.0f}; receiver saw {posts} POSTs"),
        Figure("deliver: deliveries/s (first to last 2xx)", steady, "dlv/s", baseline=baseline,
               note="excludes interpreter start-up"),
        Figure("deliver: worker CPU per delivery", worker_cpu / len(ids) * 1e6, "µs",
               higher_is_better=False,
               note="user+sys of both worker processes incl. start-up; load-independent"),
        Figure("deliver: worker peak RSS", peak_rss, "MiB", higher_is_better=False,
               note=f"the larger of the {WORKERS} worker processes"),
        Figure("deliver: raw aiohttp keep-alive POST loop", baseline, "POST/s",
               note=f"{BASELINE_POSTS} POSTs, {IN_FLIGHT} in flight, same receiver; the higher of "
                    f"before ({raw_before:,.0f}/s) and after the workers ({raw_after:,.0f}/s)"),
        Figure("deliver: raw httpx async POST loop", httpx_rate, "POST/s", baseline=baseline,
               note=f"{HTTPX_POSTS} POSTs, {IN_FLIGHT} in flight (why aiohttp)"),
        *isolation,
    ]

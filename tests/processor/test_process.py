"""``python -m processor`` as a real process: events committed while it is stopped, while its
LISTEN connection is killed or the database is down are all processed; two processors share
10,000 events without doing anything twice; Redis down delays deliveries, never loses them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue

from core.db import connect
from core.queue import QUEUE_NAME
from processor.listener import APPLICATION_NAME
from tests.processor.helpers import (
    ROOT,
    ProcessorProcess,
    add_trigger,
    delivery_statuses,
    insert_events,
    transfer,
    wait_for,
)
from tests.support import databases
from tests.support.pgcluster import PgCluster
from tests.support.ports import free_port

QUIET = {"PROCESSOR_SWEEP_INTERVAL": "300"}  # only NOTIFY and reconnect sweeps can help


def job_ids(redis_url: str) -> list[int]:
    client = redis.Redis.from_url(redis_url)
    try:
        ids: list[int] = []
        for job in Queue(QUEUE_NAME, connection=client).jobs:
            ids += job.args[0]
        return ids
    finally:
        client.close()


async def count(url: str, sql: str) -> int:
    conn = await connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def listener_pid(url: str) -> int | None:
    conn = await connect(url)
    try:
        return await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = "
            "current_database()", APPLICATION_NAME)
    finally:
        await conn.close()


async def test_events_committed_while_stopped_are_processed_after_start(
        db_url: str, redis_url: str, tmp_path: Path) -> None:
    conn = await connect(db_url)
    try:
        await add_trigger(conn, "all")
        for block in range(1, 6):
            await insert_events(conn, [transfer(block, i, i) for i in range(20)])
    finally:
        await conn.close()
    metrics_port = free_port()
    process = ProcessorProcess(database_url=db_url, redis_url=redis_url,
                               log_path=tmp_path / "processor.log",
                               METRICS_PORT=str(metrics_port), **QUIET)
    try:
        async def all_queued() -> bool:
            return await count(db_url, "SELECT count(*) FROM deliveries WHERE status = 'queued'") == 100
        await wait_for(all_queued, within=30, what="100 queued deliveries")
        assert sorted(job_ids(redis_url)) == list(range(1, 101))
        async with httpx.AsyncClient(timeout=5) as client:
            exposition = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        samples = {line.split(" ")[0]: float(line.split(" ")[1])
                   for line in exposition.splitlines() if line.startswith("blockhook_processor_")}
        assert samples["blockhook_processor_events_total"] == 100
        assert samples["blockhook_processor_matches_total"] == 100
        assert samples['blockhook_processor_deliveries_created_total{kind="matched"}'] == 100
        assert samples["blockhook_processor_enqueue_latency_seconds_count"] == 100
        assert samples["blockhook_processor_invalid_triggers"] == 0
        assert samples["blockhook_processor_decode_failures_total"] == 0
    finally:
        assert process.stop() == 0, process.output()


async def test_events_committed_while_the_listener_is_killed_are_processed(
        db_url: str, redis_url: str, tmp_path: Path) -> None:
    conn = await connect(db_url)
    process = ProcessorProcess(database_url=db_url, redis_url=redis_url,
                               log_path=tmp_path / "processor.log", **QUIET)
    try:
        await add_trigger(conn, "all")

        async def listening() -> bool:
            return await listener_pid(db_url) is not None
        await wait_for(listening, within=30, what="the LISTEN connection")
        first_pid = await listener_pid(db_url)
        await insert_events(conn, [transfer(1, 0, 1)])

        async def delivered(n: int) -> bool:
            return await count(db_url, "SELECT count(*) FROM deliveries WHERE status = 'queued'") == n
        await wait_for(lambda: delivered(1), within=10, what="the NOTIFY-driven delivery")
        for round_ in range(2):
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", await listener_pid(db_url))
            # Committed while the listener is gone: no NOTIFY reaches anyone.
            await insert_events(conn, [transfer(10 + round_, i, i) for i in range(5)])
            expected = 1 + 5 * (round_ + 1)
            await wait_for(lambda n=expected: delivered(n), within=20,  # type: ignore[misc]
                           what="events committed while the listener was disconnected")
        assert await listener_pid(db_url) not in (None, first_pid)
    finally:
        await conn.close()
        assert process.stop() == 0, process.output()
    assert "listener disconnected, reconnecting" in process.output()


@pytest.fixture
def cluster_db(pg_cluster: PgCluster) -> Iterator[tuple[PgCluster, str]]:
    url = databases.create_database(pg_cluster.url)
    databases.alembic(url, "upgrade", "head")
    yield pg_cluster, url


async def test_database_down_and_back(cluster_db: tuple[PgCluster, str], redis_url: str,
                                      tmp_path: Path) -> None:
    cluster, url = cluster_db
    conn = await connect(url)
    await add_trigger(conn, "all")
    await conn.close()
    process = ProcessorProcess(database_url=url, redis_url=redis_url,
                               log_path=tmp_path / "processor.log", **QUIET)
    try:
        async def listening() -> bool:
            return await listener_pid(url) is not None
        await wait_for(listening, within=30, what="the LISTEN connection")
        cluster.stop("immediate")
        await asyncio.sleep(2)  # the processor notices and retries with backoff
        assert process.process.poll() is None, process.output()
        cluster.start()
        conn = await connect(url)
        try:
            await insert_events(conn, [transfer(1, i, i) for i in range(10)])
        finally:
            await conn.close()

        async def all_queued() -> bool:
            return await count(url, "SELECT count(*) FROM deliveries WHERE status = 'queued'") == 10
        await wait_for(all_queued, within=40, what="deliveries after the database came back")
    finally:
        assert process.stop() == 0, process.output()


async def test_two_processors_create_and_enqueue_each_delivery_once(
        db_url: str, redis_url: str, tmp_path: Path) -> None:
    conn = await connect(db_url)
    processes = [ProcessorProcess(database_url=db_url, redis_url=redis_url,
                                  log_path=tmp_path / f"processor-{n}.log",
                                  PROCESSOR_BATCH_SIZE="500", PROCESSOR_SWEEP_INTERVAL="0.5")
                 for n in range(2)]
    try:
        await add_trigger(conn, "all")
        await add_trigger(conn, "odd", conditions={"field": "value", "op": "in",
                                                   "value": list(range(1, 100, 2))})
        for block in range(100):
            await insert_events(conn, [transfer(block, i, i) for i in range(100)])

        async def done() -> bool:
            return await count(db_url, "SELECT count(*) FROM event_batches "
                                       "WHERE processed_at IS NULL") == 0 and await count(
                db_url, "SELECT count(*) FROM deliveries WHERE status <> 'queued'") == 0
        await wait_for(done, within=90, what="10,000 events processed")
        assert await delivery_statuses(conn) == {"queued": 15_000}
        ids = job_ids(redis_url)
        assert len(ids) == len(set(ids)) == 15_000
        assert await conn.fetchval("SELECT count(*) FROM event_batches") == 100
    finally:
        await conn.close()
        codes = [process.stop() for process in processes]
    assert codes == [0, 0], [p.output() for p in processes]
    assert all("processor stopped" in p.output() for p in processes)


class RedisServer:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server binary not installed")
async def test_redis_down_keeps_deliveries_pending_until_it_is_back(
        plain_db_url: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    conn = await connect(plain_db_url)
    process = ProcessorProcess(database_url=plain_db_url, redis_url=server.url,
                               log_path=tmp_path / "processor.log",
                               PROCESSOR_SWEEP_INTERVAL="0.5")
    try:
        await add_trigger(conn, "all")
        await insert_events(conn, [transfer(1, 0, 1)])

        async def statuses(expected: dict[str, int]) -> bool:
            return await delivery_statuses(conn) == expected
        await wait_for(lambda: statuses({"queued": 1}), within=20, what="first delivery queued")
        server.stop()
        await insert_events(conn, [transfer(2, i, i) for i in range(5)])
        await wait_for(lambda: statuses({"queued": 1, "pending": 5}), within=20,
                       what="deliveries pending while Redis is down")
        await asyncio.sleep(2)
        assert await delivery_statuses(conn) == {"queued": 1, "pending": 5}
        assert process.process.poll() is None, process.output()
        server.start()  # same port, empty: the first job is lost too
        await wait_for(lambda: statuses({"queued": 6}), within=30,
                       what="pending deliveries enqueued once Redis is back")
        assert sorted(job_ids(server.url)) == [2, 3, 4, 5, 6]
    finally:
        await conn.close()
        assert process.stop() == 0, process.output()
        server.stop()
    assert "redis unavailable, deliveries stay pending" in process.output()


def test_unreachable_database_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "processor"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x",
             "REDIS_URL": "redis://127.0.0.1:1/0", "METRICS_PORT": "0"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "processor: cannot connect to the database"), result.stderr


def test_malformed_setting_exits_non_zero_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": "mysql://nope", "METRICS_PORT": "0"})
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and len(result.stderr.strip().splitlines()) == 1

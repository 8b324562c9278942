"""Errors classified: an SQL or schema error stops the processor with one line naming the query
(exit 1, no retry loop); an unexpected error in the background sweep is logged and the sweep
runs again; the LISTEN task survives its own unexpected errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import redis

from core.db import connect, create_pool
from processor import listener as listener_module
from processor.service import Processor
from tests.processor.helpers import ProcessorProcess


async def test_schema_error_exits_non_zero_with_one_line_naming_the_query(
        plain_db_url: str, redis_url: str, tmp_path: Path) -> None:
    conn = await connect(plain_db_url)
    await conn.execute("ALTER TABLE event_batches RENAME COLUMN row_count TO row_count_gone")
    processor = None
    try:
        processor = ProcessorProcess(database_url=plain_db_url, redis_url=redis_url,
                                     log_path=tmp_path / "processor.log",
                                     PROCESSOR_SWEEP_INTERVAL="0.2")
        code = await asyncio.to_thread(processor.process.wait, 30)
        output = processor.output()
        assert code == 1, output
        [line] = [line for line in output.splitlines() if line.startswith("processor:")]
        assert "database error 42703" in line and "row_count" in line and "query: " in line
        assert output.count('"processing failed, retrying"') == 0
    finally:
        if processor is not None:
            processor.stop()
        await conn.execute("ALTER TABLE event_batches RENAME COLUMN row_count_gone TO row_count")
        await conn.close()


async def _run_briefly(processor: Processor, until: object, *, within: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        for _ in range(int(within / 0.05)):
            if until() or task.done():  # type: ignore[operator]
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception() if task.done() else None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_an_unexpected_error_in_the_sweep_is_logged_and_the_sweep_runs_again(
        plain_db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = await create_pool(plain_db_url)
    client = redis.Redis.from_url(redis_url)
    processor = Processor(database_url=plain_db_url, pool=pool, redis_client=client,
                          batch_size=100, sweep_interval=0.05)
    real_sweep = processor.sweep
    calls = {"n": 0}

    async def broken_once() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug hit by one row")
        await real_sweep()

    monkeypatch.setattr(processor, "sweep", broken_once)
    try:
        await _run_briefly(processor, lambda: calls["n"] >= 3)
        assert calls["n"] >= 3
    finally:
        await pool.close()
        client.close()


async def test_the_listener_survives_an_unexpected_error(
        plain_db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_watch = listener_module._watch
    calls = {"n": 0}

    async def broken_once(conn: asyncpg.Connection, *args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug in the listener")
        await real_watch(conn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(listener_module, "_watch", broken_once)
    pool = await create_pool(plain_db_url)
    client = redis.Redis.from_url(redis_url)
    processor = Processor(database_url=plain_db_url, pool=pool, redis_client=client,
                          batch_size=100, sweep_interval=0.05)
    try:
        await _run_briefly(processor, lambda: calls["n"] >= 2)
        assert calls["n"] >= 2
    finally:
        await pool.close()
        client.close()

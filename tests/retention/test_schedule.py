"""The processor runs retention: its sweep calls ``RetentionSchedule.run_if_due``, which runs a
pass in short slices, then waits for ``RETENTION_INTERVAL``; database errors are logged and
retried, never raised. End to end: a real ``python -m processor`` prunes aged rows."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from core.db import connect, create_pool
from retention.policy import RetentionPolicy
from retention.runner import RetentionSchedule
from tests.processor.helpers import ProcessorProcess, wait_for
from tests.retention.rows import days, insert_events


async def test_a_pass_runs_in_slices_then_waits_for_the_interval(plain_db_url: str) -> None:
    conn = await connect(plain_db_url)
    pool = await create_pool(plain_db_url, min_size=1, max_size=2)
    try:
        await insert_events(conn, blocks=range(1, 31), at=datetime.now(UTC) - days(45))
        schedule = RetentionSchedule(RetentionPolicy(events=days(30), batch_rows=5),
                                     interval=3600, slice_seconds=0)
        remaining, report = [], None
        deadline = time.monotonic() + 30
        while report is None:
            assert time.monotonic() < deadline, "the pass never completed"
            report = await schedule.run_if_due(pool)
            remaining.append(await conn.fetchval("SELECT count(*) FROM events"))
            await asyncio.sleep(0.01)
        # A zero budget still makes progress: one statement (5 rows) per slice, each slice
        # followed by a pause (calls meanwhile do nothing).
        assert report.deleted["events"] == 30
        progress = sorted(set(remaining), reverse=True)
        assert progress == [25, 20, 15, 10, 5, 0], remaining
        assert len(remaining) > len(progress)  # some calls fell in a pause
        await insert_events(conn, blocks=range(31, 32), at=datetime.now(UTC) - days(45))
        assert await schedule.run_if_due(pool) is None  # the next pass is an hour away
        assert await conn.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await pool.close()
        await conn.close()


async def test_database_errors_are_logged_and_retried_not_raised(plain_db_url: str) -> None:
    # Every statement times out: the slice fails, the schedule logs it and backs off.
    pool = await create_pool(plain_db_url, min_size=1, max_size=1,
                             server_settings={"statement_timeout": "1"})
    try:
        conn = await connect(plain_db_url)
        await insert_events(conn, blocks=range(1, 2000), at=datetime.now(UTC) - days(45),
                            per_block=20)
        await conn.close()
        schedule = RetentionSchedule(RetentionPolicy(events=days(30)), interval=3600)
        assert await schedule.run_if_due(pool) is None
        assert await schedule.run_if_due(pool) is None  # backed off: not retried at once
    finally:
        await pool.close()


async def test_the_processor_prunes_on_its_schedule(plain_db_url: str, redis_url: str,
                                                    tmp_path: Path) -> None:
    conn = await connect(plain_db_url)
    processor = None
    try:
        await insert_events(conn, blocks=range(1, 11), at=datetime.now(UTC) - days(45))
        await insert_events(conn, blocks=range(11, 13), at=datetime.now(UTC) - days(1))
        processor = ProcessorProcess(database_url=plain_db_url, redis_url=redis_url,
                                     log_path=tmp_path / "processor.log",
                                     RETENTION_EVENTS="30d", RETENTION_INTERVAL="600",
                                     PROCESSOR_SWEEP_INTERVAL="0.2")

        async def pruned() -> bool:
            return await conn.fetchval("SELECT count(*) FROM events") == 2

        await wait_for(pruned, within=30, what="the processor's retention pass")
        await wait_for(lambda: _logged(processor, '"retention pass"'), within=10,
                       what="the pass's log line")
        assert processor.stop() == 0
        assert '"events compression not applicable"' in processor.output()
    finally:
        if processor is not None:
            processor.stop()
        await conn.close()


async def _logged(processor: ProcessorProcess, text: str) -> bool:
    return text in processor.output()

"""Retention runs where it is scheduled — in the processor, connected as ``blockhook_processor``,
which does not own ``events``: a whole pass deletes aged rows on plain Postgres and drops aged
chunks on TimescaleDB (through migration 0005's definer function), on both backends. The definer
functions refuse anything that is not ``events``."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from core.db import connect, storage_path
from core.roles import PROCESSOR, READONLY, role_url
from retention.policy import RetentionPolicy
from retention.runner import RetentionRunner
from tests.retention.rows import days, insert_events, set_checkpoint

POLICY = RetentionPolicy(events=days(30), event_batches=days(1), deliveries=days(30),
                         reorgs=days(30))


async def test_a_pass_as_the_processor_role_prunes_events(db_url: str) -> None:
    now = datetime.now(UTC)
    owner = await connect(db_url)
    try:
        aged = await insert_events(owner, blocks=range(1, 50), at=now - days(45),
                                   block_seconds=3600)
        fresh = await insert_events(owner, blocks=range(900, 905), at=now - days(1))
        await set_checkpoint(owner, 1000)
        hypertable = await storage_path(owner) == "timescaledb"
    finally:
        await owner.close()

    conn = await connect(role_url(db_url, PROCESSOR))
    try:
        assert await conn.fetchval("SELECT current_user") == PROCESSOR
        report = await RetentionRunner(POLICY).run(conn, now=now)
        assert report is not None and report.done, report
        remaining = {row["id"] for row in await conn.fetch("SELECT id FROM events")}
        assert remaining == set(fresh), "aged events stayed or fresh ones went"
        assert report.deleted["events"] == len(aged)
        if hypertable:
            assert report.chunks_dropped, "no chunk dropped on the hypertable"
            with pytest.raises(asyncpg.PostgresError, match="not a chunk of events"):
                await conn.execute("SELECT blockhook_compress_event_chunk('deliveries'::regclass)")
    finally:
        await conn.close()


async def test_only_the_processor_role_may_call_the_definer_functions(db_url: str) -> None:
    owner = await connect(db_url)
    try:
        if await storage_path(owner) != "timescaledb":
            assert await owner.fetchval(
                "SELECT to_regproc('blockhook_drop_event_chunks') IS NULL")
            return
    finally:
        await owner.close()
    conn = await connect(role_url(db_url, READONLY))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SELECT blockhook_drop_event_chunks(now())")
    finally:
        await conn.close()

"""Retention never deletes what the pipeline still needs, on both backends: for each guard an
old event it protects survives a pass that deletes an older unprotected one, and goes once the
guard is lifted. Also: a pass never deletes rows a writer has not committed yet."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest

from core.db import connect, storage_path
from retention import events as events_module
from retention.guards import Pin
from retention.policy import RetentionPolicy
from retention.runner import RetentionRunner, try_lock, unlock
from tests.retention.rows import (
    CHAIN,
    action,
    days,
    delivery,
    event_ids,
    insert_events,
    set_checkpoint,
)
from tests.support import databases

POLICY = RetentionPolicy(events=days(30))

Step = Callable[[asyncpg.Connection, int], Awaitable[None]]


async def _window(conn: asyncpg.Connection, protected: int) -> None:
    await set_checkpoint(conn, 550)  # window of 128: blocks above 422 (P is block 500)


async def _window_moves(conn: asyncpg.Connection, protected: int) -> None:
    await set_checkpoint(conn, 10_000)


async def _uncorrected_reorg(conn: asyncpg.Connection, protected: int) -> None:
    await conn.execute("UPDATE events SET invalidated = true WHERE id = $1", protected)
    await conn.execute("""INSERT INTO reorgs (chain_id, depth, common_ancestor, old_head_hash,
                                              new_head_hash, events_invalidated)
                          VALUES ($1, 3, 400, '0xold', '0xnew', 1)""", CHAIN)


async def _reorg_corrected(conn: asyncpg.Connection, protected: int) -> None:
    await conn.execute("UPDATE reorgs SET corrected_at = now()")


async def _unprocessed(conn: asyncpg.Connection, protected: int) -> None:
    await conn.execute("UPDATE event_batches SET processed_at = NULL WHERE first_id = $1", protected)


async def _processed(conn: asyncpg.Connection, protected: int) -> None:
    await conn.execute("UPDATE event_batches SET processed_at = now()")


async def _deferred(conn: asyncpg.Connection, protected: int) -> None:
    _, action_id = await action(conn)
    await conn.execute(
        """INSERT INTO deferred_matches (action_id, event_id, trigger_id, chain_id, block_number,
                                         block_time, ready_at_block)
           SELECT $1, $2, trigger_id, $3, 500, now() - interval '40 days', 512
           FROM actions WHERE id = $1""", action_id, protected, CHAIN)


async def _ripened(conn: asyncpg.Connection, protected: int) -> None:
    await conn.execute("DELETE FROM deferred_matches")


async def _undelivered(conn: asyncpg.Connection, protected: int) -> None:
    await delivery(conn, await action(conn), protected, status="queued",
                   created=datetime.now(UTC) - days(40))


async def _delivered(conn: asyncpg.Connection, protected: int) -> None:
    await conn.execute("UPDATE deliveries SET status = 'delivered'")


async def _nothing(conn: asyncpg.Connection, protected: int) -> None:
    pass


GUARDS: dict[str, tuple[Step, Step]] = {
    "reorg window": (_window, _window_moves),
    "uncorrected reorg": (_uncorrected_reorg, _reorg_corrected),
    "unprocessed batch": (_unprocessed, _processed),
    "deferred match": (_deferred, _ripened),
    "undelivered delivery": (_undelivered, _delivered),
}


async def test_each_guard_keeps_its_event_until_lifted(db_url: str) -> None:
    now = datetime.now(UTC)
    runner = RetentionRunner(POLICY)
    for name, (protect, release) in {**GUARDS, "nothing (control)": (_nothing, _nothing)}.items():
        databases.truncate_all(db_url)
        conn = await connect(db_url)
        try:
            # U: unprotected, 50 days old; P: 40 days old, protected; R: an hour old.
            [unprotected] = await insert_events(conn, blocks=range(10, 11), at=now - days(50))
            [protected] = await insert_events(conn, blocks=range(500, 501), at=now - days(40))
            [recent] = await insert_events(conn, blocks=range(540, 541), at=now - days(1 / 24))
            await set_checkpoint(conn, 10_000)
            await protect(conn, protected)
            report = await runner.run(conn, now=now)
            assert report is not None and report.done
            expected = {recent} if name.endswith("(control)") else {protected, recent}
            assert await event_ids(conn) == expected, name
            await release(conn, protected)
            await runner.run(conn, now=now)
            assert await event_ids(conn) == {recent}, f"{name}: lifted"
        finally:
            await conn.close()


async def test_a_pass_never_deletes_what_a_writer_has_not_committed(db_url: str) -> None:
    """An old range replayed while a pass runs: uncommitted rows are not the pass's to see (plain)
    or hold the lock the chunk drop needs (TimescaleDB: the drop is put off); once committed they
    are protected by their unprocessed batch, and go only after it is processed."""
    now = datetime.now(UTC)
    runner = RetentionRunner(POLICY, lock_timeout_ms=200)
    conn = await connect(db_url)
    writer = psycopg.connect(db_url)
    try:
        await insert_events(conn, blocks=range(1, 3), at=now - days(50))
        await set_checkpoint(conn, 10_000)
        writer.execute("""INSERT INTO events (chain_id, block_number, block_hash, block_time,
                                              tx_hash, tx_index, log_index, address, data)
                          VALUES (%s, 5, '0x05', %s, '0x05', 0, 0, '0x00', '0x')""",
                       (CHAIN, now - days(49)))
        report = await runner.run(conn, now=now)
        assert report is not None
        if await storage_path(conn) == "timescaledb":  # the writer holds the hypertable
            assert report.deferred and not report.chunks_dropped
        else:  # the committed old rows go, the uncommitted one is not the pass's to see
            assert report.deleted["events"] == 2
        writer.commit()
        assert await conn.fetchval("SELECT count(*) FROM events WHERE block_number = 5") == 1
        await runner.run(conn, now=now)
        assert await conn.fetchval("SELECT count(*) FROM events WHERE block_number = 5") == 1
        await conn.execute("UPDATE event_batches SET processed_at = now()")
        await runner.run(conn, now=now)
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
    finally:
        writer.close()
        await conn.close()


async def test_one_runner_at_a_time(plain_db_url: str) -> None:
    """A second runner finds the retention lock taken and skips; once free, it runs."""
    now = datetime.now(UTC)
    conn = await connect(plain_db_url)
    other = await connect(plain_db_url)
    try:
        await insert_events(conn, blocks=range(1, 3), at=now - days(50))
        assert await try_lock(other)  # another runner, mid-pass
        assert await RetentionRunner(POLICY).run(conn, now=now) is None
        assert await conn.fetchval("SELECT count(*) FROM events") == 2
        await unlock(other)
        assert await RetentionRunner(POLICY).run(conn, now=now) is not None
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await other.close()
        await conn.close()


async def test_a_failed_unlock_closes_the_session_so_the_lock_cannot_leak(
        plain_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pooled connections are released without a session reset (core.db.create_pool): if the
    unlock fails, the runner closes the connection, and the next runner is not locked out."""
    from core.db import create_pool
    from retention import runner as runner_module

    async def failing_unlock(conn: asyncpg.Connection) -> None:
        raise asyncpg.InterfaceError("connection lost while unlocking")

    monkeypatch.setattr(runner_module, "unlock", failing_unlock)
    pool = await create_pool(plain_db_url, min_size=1, max_size=1)
    other = await connect(plain_db_url)
    try:
        with pytest.raises(asyncpg.InterfaceError):
            async with pool.acquire() as conn:
                await RetentionRunner(POLICY).run(conn, now=datetime.now(UTC))
        assert await try_lock(other)
    finally:
        await other.close()
        await pool.close()


async def test_chunk_drop_keeps_writers_out_between_check_and_drop(
        timescale_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """TimescaleDB: an old range committed *after* the guards were read and *before* the drop
    would go with its chunk. The drop holds the hypertable against writers for exactly that
    span: the writer waits, commits after, and its rows survive (protected by their batch)."""
    databases.truncate_all(timescale_database)
    now = datetime.now(UTC)
    conn = await connect(timescale_database)
    await insert_events(conn, blocks=range(1, 3), at=now - days(50))
    await set_checkpoint(conn, 10_000)
    writer_done = threading.Event()

    def replay_old_block() -> None:
        with psycopg.connect(timescale_database, autocommit=True) as writer:
            writer.execute("""INSERT INTO events (chain_id, block_number, block_hash, block_time,
                                                  tx_hash, tx_index, log_index, address, data)
                              VALUES (%s, 5, '0x05', %s, '0x05', 0, 0, '0x00', '0x')""",
                           (CHAIN, now - days(50) + timedelta(minutes=5)))
        writer_done.set()

    real_pins = events_module.pins

    async def pins_then_writer(*args: Any, **kwargs: Any) -> list[Pin]:
        found = await real_pins(*args, **kwargs)
        threading.Thread(target=replay_old_block, daemon=True).start()
        # The writer must not get through while the drop is pending.
        assert not await asyncio.to_thread(writer_done.wait, 1.0)
        return found

    monkeypatch.setattr(events_module, "pins", pins_then_writer)
    try:
        report = await RetentionRunner(POLICY).run(conn, now=now)
        assert report is not None and len(report.chunks_dropped) == 1
        assert await asyncio.to_thread(writer_done.wait, 10.0)
        assert await conn.fetchval("SELECT count(*) FROM events WHERE block_number = 5") == 1
        monkeypatch.setattr(events_module, "pins", real_pins)
        await RetentionRunner(POLICY).run(conn, now=now)  # its batch is unprocessed: kept
        assert await conn.fetchval("SELECT count(*) FROM events WHERE block_number = 5") == 1
    finally:
        await conn.close()


async def test_more_protected_rows_in_a_block_than_a_batch_holds_do_not_stall_the_pass(
        plain_db_url: str) -> None:
    """Plain Postgres walks the index a batch at a time: a block whose protected rows fill a
    whole batch is stepped over, and the pass goes on to the rows after it."""
    now = datetime.now(UTC)
    conn = await connect(plain_db_url)
    try:
        pinned = await insert_events(conn, blocks=range(10, 11), at=now - days(50), per_block=4)
        later = await insert_events(conn, blocks=range(11, 13), at=now - days(49), per_block=2)
        ids = await action(conn)
        for event_id in pinned:
            await delivery(conn, ids, event_id, status="pending", created=now)
        report = await asyncio.wait_for(
            RetentionRunner(RetentionPolicy(events=days(30), batch_rows=3)).run(conn, now=now), 30)
        assert report is not None and report.deleted["events"] == len(later)
        assert await event_ids(conn) == set(pinned)
    finally:
        await conn.close()

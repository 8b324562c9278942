"""Every service session carries the documented timeouts, and database errors are classified:
a lost connection is transient, an SQL or schema error is not."""

from __future__ import annotations

import asyncpg
import psycopg

from core import db
from core.settings import WorkerSettings


async def _show(conn: asyncpg.Connection) -> tuple[str, str, str]:
    row = await conn.fetchrow(
        """SELECT current_setting('statement_timeout') AS s, current_setting('lock_timeout') AS l,
                  current_setting('idle_in_transaction_session_timeout') AS i""")
    return row["s"], row["l"], row["i"]


async def test_connections_and_pools_set_the_default_timeouts(plain_db_url: str) -> None:
    conn = await db.connect(plain_db_url)
    try:
        assert await _show(conn) == ("1min", "10s", "1min")
    finally:
        await conn.close()
    pool = await db.create_pool(plain_db_url)
    try:
        async with pool.acquire() as pooled:
            assert await _show(pooled) == ("1min", "10s", "1min")
    finally:
        await pool.close()


async def test_releasing_a_pooled_connection_costs_no_round_trip(plain_db_url: str) -> None:
    """asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is one more
    query per release; our pooled connections hold no session state, so none is sent."""
    pool = await db.create_pool(plain_db_url, min_size=1, max_size=1)
    queries: list[str] = []
    try:
        async with pool.acquire() as pooled:
            await pooled.fetchval("SELECT 1")
            pooled.add_query_logger(lambda record: queries.append(record.query))
        assert queries == []
    finally:
        await pool.close()


async def test_a_released_connection_still_rolls_back_its_open_transaction(
        plain_db_url: str) -> None:
    pool = await db.create_pool(plain_db_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as pooled:
            await pooled.execute("CREATE TABLE IF NOT EXISTS release_probe (n int)")
            await pooled.execute("BEGIN")
            await pooled.execute("INSERT INTO release_probe VALUES (1)")
        async with pool.acquire() as pooled:  # the same connection (max_size 1)
            assert not pooled.is_in_transaction()
            assert await pooled.fetchval("SELECT count(*) FROM release_probe") == 0
            await pooled.execute("DROP TABLE release_probe")
    finally:
        await pool.close()


async def test_settings_override_the_timeouts(plain_db_url: str) -> None:
    settings = WorkerSettings(database_url=plain_db_url, db_statement_timeout=5,
                              db_lock_timeout=0.5, db_idle_in_transaction_timeout=0)
    conn = await db.connect(plain_db_url, server_settings=settings.db_timeouts())
    try:
        assert await _show(conn) == ("5s", "500ms", "0")
    finally:
        await conn.close()
    options = db.libpq_options(settings.db_timeouts())
    with psycopg.connect(plain_db_url, options=options) as sync_conn:
        row = sync_conn.execute("SHOW lock_timeout").fetchone()
        assert row is not None and row[0] == "500ms"


async def test_sql_errors_are_permanent_and_lost_connections_transient(plain_db_url: str) -> None:
    conn = await db.connect(plain_db_url)
    try:
        try:
            await conn.fetch("SELECT no_such_column FROM deliveries")
        except asyncpg.PostgresError as error:
            assert not db.is_transient(error)
            message = str(db.DatabaseBroken.from_error(error))
            assert message.startswith("database error 42703: column \"no_such_column\"")
            assert message.endswith("in query: SELECT no_such_column FROM deliveries")
        try:
            await conn.execute("SET statement_timeout = '10ms'; SELECT pg_sleep(1)")
        except asyncpg.PostgresError as error:
            assert db.is_transient(error)  # 57014: a statement timeout may pass next time
        other = await db.connect(plain_db_url)
        await conn.execute("SELECT pg_terminate_backend($1)", other.get_server_pid())
        try:
            await other.fetchval("SELECT 1")
        except Exception as error:  # noqa: BLE001 - which class asyncpg raises varies
            assert db.is_transient(error)
        else:
            raise AssertionError("the terminated connection still answered")
    finally:
        await conn.close()
    assert db.is_transient(OSError("connection refused"))
    assert not db.is_transient(ValueError("a bug"))

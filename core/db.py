"""Database helpers: URLs, asyncpg pools and connections, advisory-lock keys, storage path."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

from core.errors import ConfigError, PermanentError


def sqlalchemy_url(database_url: str) -> str:
    """The SQLAlchemy form of a ``postgresql://`` URL (psycopg 3 driver, used by Alembic)."""
    return "postgresql+psycopg://" + database_url.split("://", 1)[1]


def asyncpg_dsn(database_url: str) -> str:
    """The asyncpg form of a Postgres URL (asyncpg wants ``postgresql://``)."""
    return "postgresql://" + database_url.split("://", 1)[1]


async def _init_connection(conn: asyncpg.Connection) -> None:
    import orjson

    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads, schema="pg_catalog")


# Session settings for every connection. Custom plans always: on a hypertable a generic plan
# cannot exclude chunks at plan time, and the one Postgres builds after five executions of a
# prepared statement (to compare costs) took ~100 ms with 500 chunks — a latency spike per
# connection and statement, for a plan that is then never used.
#
# Timeouts bound what one statement, one lock wait and one idle transaction may cost, so a stuck
# query or a forgotten transaction fails loudly instead of holding locks and connections:
# ``DB_STATEMENT_TIMEOUT``, ``DB_LOCK_TIMEOUT`` and ``DB_IDLE_IN_TRANSACTION_TIMEOUT``
# (core.settings.BaseServiceSettings) override these defaults per service.
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 60.0
DEFAULT_LOCK_TIMEOUT_SECONDS = 10.0
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = 60.0


def timeout_settings(*, statement: float = DEFAULT_STATEMENT_TIMEOUT_SECONDS,
                     lock: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
                     idle_in_transaction: float = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS,
                     ) -> dict[str, str]:
    """Server settings for the three timeouts, in seconds (``0`` disables one)."""
    return {"statement_timeout": f"{int(statement * 1000)}ms",
            "lock_timeout": f"{int(lock * 1000)}ms",
            "idle_in_transaction_session_timeout": f"{int(idle_in_transaction * 1000)}ms"}


SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan", **timeout_settings()}


def libpq_options(server_settings: dict[str, str]) -> str:
    """``server_settings`` as a libpq ``options`` string, for psycopg connections."""
    return " ".join(f"-c {name}={value}" for name, value in server_settings.items())
# asyncpg waits 60 s for a connection by default; during a server restart that stalls recovery.
CONNECT_TIMEOUT_SECONDS = 10.0


def _server_settings(kwargs: dict[str, Any]) -> dict[str, str]:
    kwargs.setdefault("timeout", CONNECT_TIMEOUT_SECONDS)
    return {**SESSION_SETTINGS, **(kwargs.pop("server_settings", None) or {})}


async def connect(database_url: str, **kwargs: Any) -> asyncpg.Connection:
    """One connection with JSON codecs and ``SESSION_SETTINGS``; raises ``ConfigError`` with one
    line when unreachable."""
    settings = _server_settings(kwargs)
    try:
        conn = await asyncpg.connect(asyncpg_dsn(database_url), server_settings=settings, **kwargs)
    except (OSError, asyncpg.PostgresError) as error:
        raise ConfigError(f"cannot connect to the database: {str(error) or repr(error)}") from error
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release hook of our pools: nothing beyond asyncpg's own rollback of an open transaction.

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`` on every release: one more round trip per use of a pooled connection, for session
    state our pooled connections never hold. Session-level state belongs on a connection of its
    own (``connect``): the listener's LISTEN, the indexer's and the workers' advisory locks.
    Pooled work keeps to transaction-scoped ``SET LOCAL`` and transaction-scoped locks."""


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 4,
                      **kwargs: Any) -> asyncpg.Pool:
    """A pool with JSON codecs and ``SESSION_SETTINGS``; raises ``ConfigError`` with one line
    when unreachable. Releasing a connection costs no round trip (:func:`_keep_session`)."""
    settings = _server_settings(kwargs)
    kwargs.setdefault("reset", _keep_session)
    try:
        pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=min_size,
                                         max_size=max_size, init=_init_connection,
                                         server_settings=settings, **kwargs)
    except (OSError, asyncpg.PostgresError) as error:
        raise ConfigError(f"cannot connect to the database: {str(error) or repr(error)}") from error
    assert pool is not None
    return pool


# SQLSTATE classes and codes a retry can cure: connection exceptions (08), operator
# intervention (57: admin shutdown, cannot connect now, statement timeout by cancel),
# insufficient resources (53), transaction rollback (40: serialization failure, deadlock),
# lock not available (55P03, lock_timeout).
_TRANSIENT_CLASSES = ("08", "57", "53", "40")
_TRANSIENT_CODES = ("55P03",)


def is_transient(error: BaseException) -> bool:
    """Whether a database error is worth retrying (lost connection, server restarting, a
    timeout, a deadlock). SQL and schema errors (a missing column, a syntax or type error, a
    constraint the code did not expect) are not: retrying them only hides a bug."""
    if isinstance(error, asyncpg.InvalidCachedStatementError):
        return True  # a migration changed a table under a prepared statement: re-prepared
    if isinstance(error, asyncpg.PostgresError):
        code = str(getattr(error, "sqlstate", "") or "")
        return code.startswith(_TRANSIENT_CLASSES) or code in _TRANSIENT_CODES
    return isinstance(error, (OSError, TimeoutError, asyncpg.InterfaceError,
                              asyncpg.InternalClientError))


class DatabaseBroken(PermanentError):
    """An SQL or schema error (the database does not match the code, or the code has a bug):
    retrying cannot help. Services exit 1 with its one-line message."""

    @classmethod
    def from_error(cls, error: BaseException, query: str | None = None) -> DatabaseBroken:
        """One line naming the failing query (asyncpg keeps it on the error) and the error."""
        detail = (str(error).splitlines() or [""])[0] or type(error).__name__
        code = getattr(error, "sqlstate", None)
        text = f"database error {code}: {detail}" if code else f"database error: {detail}"
        query = query if query is not None else getattr(error, "query", None)
        if query:
            text += f" in query: {' '.join(str(query).split())[:200]}"
        return cls(text)


def advisory_key(role: str, chain_id: int) -> int:
    """A stable signed 64-bit advisory-lock key for (role, chain): e.g. ``("writer", 1)``."""
    digest = hashlib.blake2b(f"blockhook:{role}:{chain_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def writer_lock_key(chain_id: int) -> int:
    """The chain's single-writer lock, held by the indexer and by replay."""
    return advisory_key("writer", chain_id)


async def storage_path(conn: asyncpg.Connection) -> str:
    """``'timescaledb'`` when ``events`` is a hypertable, else ``'plain'``."""
    is_hypertable = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
           AND to_regclass('timescaledb_information.hypertables') IS NOT NULL""")
    if not is_hypertable:
        return "plain"
    found = await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'events'")
    return "timescaledb" if found else "plain"

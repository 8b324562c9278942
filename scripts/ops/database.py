"""Database preparation for ``make run``: create the database if absent, migrate, reset a devnet.

Synchronous (psycopg) on purpose: these run once, before any service starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from core.errors import ConfigError
from core.redact import redact_url

ROOT = Path(__file__).resolve().parents[2]

# Chain-scoped tables a devnet restart makes meaningless (its blocks begin again at genesis with
# new hashes). Deliveries have no chain column: they go through their trigger.
_DEVNET_TABLES = ("deferred_matches", "event_batches", "events", "blocks", "checkpoints", "reorgs")


def _server_url(database_url: str) -> tuple[str, str]:
    """(URL of the server's maintenance database ``postgres``, the target database's name)."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if not name:
        raise ConfigError(f"DATABASE_URL {redact_url(database_url)!r} names no database")
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, "")), name


def ensure_database(database_url: str) -> bool:
    """Create the database named by ``database_url`` unless it exists; True when created.
    Raises ``ConfigError`` with one line when the server is unreachable."""
    server_url, name = _server_url(database_url)
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                return False  # created concurrently by someone else: fine
            return True
    except psycopg.OperationalError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ConfigError(f"cannot connect to the database server: {first_line}") from error


def migrate(database_url: str) -> None:
    """``alembic upgrade head`` (the real command, as users run it); raise ``ConfigError`` with
    Alembic's last output line on failure."""
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(f"alembic upgrade head failed: {lines[-1] if lines else result.returncode}")


def reset_devnet_chain(database_url: str, chain_id: int) -> None:
    """Forget everything ingested for ``chain_id`` (blocks, events, checkpoints, reorgs, batches)
    and the deliveries of that chain's triggers. Only for a devnet that ``make run`` has just
    started from genesis: keeping the old checkpoint would look like a reorg deeper than the
    window. Triggers and actions are kept."""
    with psycopg.connect(database_url, autocommit=False, connect_timeout=10) as conn:
        conn.execute("""DELETE FROM deliveries USING triggers
                        WHERE deliveries.trigger_id = triggers.id AND triggers.chain_id = %s""",
                     (chain_id,))
        for table in _DEVNET_TABLES:
            conn.execute(sql.SQL("DELETE FROM {} WHERE chain_id = %s").format(sql.Identifier(table)),
                         (chain_id,))
        conn.commit()

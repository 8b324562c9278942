"""Database roles (core/roles.py, migration 0003): the grants in the database are exactly the
declared ones, each role can do its job and is refused what it must not touch (a read-only
user cannot read a secret), status runs read-only, and role creation is safe when migrations
of two databases race."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from core.roles import (
    INGEST,
    PRIVILEGES,
    PROCESSOR,
    READONLY,
    ROLES,
    WORKERS,
    ensure_roles,
    parse_privileges,
    role_url,
)
from core.schema import metadata
from tests.support import databases

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

_TABLE_GRANTS = """
SELECT c.relname, a.grantee::regrole::text, a.privilege_type
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.relnamespace = 'public'::regnamespace AND a.grantee::regrole::text LIKE 'blockhook\\_%'
"""
_COLUMN_GRANTS = """
SELECT c.relname, att.attname, a.grantee::regrole::text, a.privilege_type
FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid, aclexplode(att.attacl) a
WHERE c.relnamespace = 'public'::regnamespace AND a.grantee::regrole::text LIKE 'blockhook\\_%'
"""

EVENT = ("INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index,"
         " log_index, address, data) VALUES (99, 1, '0xb1', '2026-11-01T00:00:00Z', '0xt', 0,"
         " 0, '0xa', '0x') RETURNING id")
# A creation log of the factory _setup_rows registers (child in topic 1).
CREATION = ("INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index,"
            " log_index, address, topic0, topic1, data) VALUES (99, 1, '0xb1',"
            " '2026-11-01T00:00:00Z', '0xt', 0, 1, '0xf1', '0xc0', '0x' || repeat('0', 24) ||"
            " repeat('ab', 20), '0x') RETURNING id")

# What each service does (allowed) and what it must not (refused), as SQL. Allowed statements
# run in a transaction that is rolled back afterwards.
ALLOWED = {
    INGEST: [
        EVENT,  # also writes event_batches through the statement trigger, as this role
        "UPDATE events SET invalidated = true, invalidated_at = now() WHERE chain_id = 99",
        "INSERT INTO blocks VALUES (99, 1, '0xb1', '0xb0', now()) ON CONFLICT (chain_id, number)"
        " DO UPDATE SET hash = excluded.hash",
        "DELETE FROM blocks WHERE chain_id = 99 AND number < 0",
        "INSERT INTO checkpoints (chain_id, block_number, block_hash) VALUES (99, 1, '0xb1')"
        " ON CONFLICT (chain_id) DO UPDATE SET block_number = excluded.block_number",
        "INSERT INTO reorgs (chain_id, depth, common_ancestor, old_head_hash, new_head_hash,"
        " events_invalidated) VALUES (99, 1, 0, '0x1', '0x2', 0) RETURNING id",
        CREATION,  # a factory's creation log: the trigger writes its child, as this role
        "SELECT chain_id, address, topic0, child_topic, child_offset FROM factories",
        "SELECT child_address, block_number FROM factory_children",
    ],
    PROCESSOR: [
        "SELECT id, data FROM events",
        "SELECT id, processed_at FROM event_batches FOR UPDATE SKIP LOCKED",
        "UPDATE event_batches SET processed_at = now()",
        "SELECT t.id, a.id, a.config::text FROM triggers t JOIN actions a ON a.trigger_id = t.id"
        " AND a.enabled WHERE t.enabled",
        "UPDATE triggers SET error = 'bad' WHERE id = -1",
        "SELECT id FROM reorgs WHERE corrected_at IS NULL FOR UPDATE SKIP LOCKED",
        "UPDATE reorgs SET corrected_at = now() WHERE id = -1",
        "INSERT INTO deliveries (action_id, trigger_id, event_id, kind) SELECT a.id, a.trigger_id,"
        " 1, 'matched' FROM actions a",
        "UPDATE deliveries SET status = 'queued' WHERE id = -1",
        "DELETE FROM deferred_matches WHERE event_id = -1",
        "SELECT block_number FROM checkpoints",
        # retention
        "DELETE FROM events WHERE chain_id = -1", "DELETE FROM event_batches WHERE id = -1",
        "DELETE FROM deliveries WHERE id = -1", "DELETE FROM reorgs WHERE id = -1",
        "DELETE FROM blocks WHERE chain_id = -1",
        "LOCK TABLE ONLY events IN EXCLUSIVE MODE",
        # factory registration (core.factories): register, barrier, backfill
        "INSERT INTO factories (chain_id, address, topic0, child_topic, child_offset)"
        " VALUES (99, '0xf2', '0xc0', 0, 0) ON CONFLICT DO NOTHING RETURNING id",
        "LOCK TABLE events IN SHARE MODE",
        "INSERT INTO factory_children (factory_id, chain_id, child_address, block_number,"
        " block_hash, block_time, log_index, event_id) SELECT f.id, 99, '0xc', 1, '0xb1', now(),"
        " 0, 1 FROM factories f ON CONFLICT DO NOTHING",
    ],
    WORKERS: [
        "SELECT d.id, a.config::text, a.secret, a.previous_secret, t.name, e.data"
        " FROM deliveries d JOIN actions a ON a.id = d.action_id JOIN triggers t"
        " ON t.id = d.trigger_id LEFT JOIN events e ON e.id = d.event_id FOR UPDATE OF d SKIP LOCKED",
        "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1",
        "SELECT id, secret FROM actions FOR UPDATE SKIP LOCKED",
        "UPDATE actions SET secret = secret, previous_secret = NULL,"
        " previous_secret_expires_at = NULL",
    ],
    READONLY: [
        *(f"SELECT * FROM {table}" for table in PRIVILEGES if table != "actions"),
        "SELECT id, trigger_id, type, enabled, created_at, updated_at FROM actions",
    ],
}
REFUSED = {
    INGEST: ["INSERT INTO factories (chain_id, address, topic0, child_topic, child_offset)"
             " VALUES (99, '0xf2', '0xc0', 0, 0)", "SELECT 1 FROM actions", "SELECT 1 FROM deliveries", "SELECT 1 FROM triggers",
             "SELECT 1 FROM deferred_matches", "DELETE FROM events",
             "UPDATE events SET data = '0x00'", "UPDATE reorgs SET corrected_at = now()",
             "INSERT INTO triggers (name, chain_id, event_signature) VALUES ('x', 1, 'E()')"],
    PROCESSOR: ["SELECT secret FROM actions", "SELECT previous_secret FROM actions",
                "SELECT * FROM actions", "UPDATE actions SET config = '{}'",
                "UPDATE actions SET secret = NULL", "INSERT INTO actions (trigger_id) VALUES (1)",
                "UPDATE triggers SET name = 'renamed'", "DELETE FROM triggers", EVENT,
                "UPDATE events SET invalidated = true", "UPDATE blocks SET hash = '0x'",
                "UPDATE checkpoints SET block_number = 0", "DROP TABLE events",
                "ALTER TABLE events ADD COLUMN x int"],
    WORKERS: ["UPDATE actions SET config = '{}'", "UPDATE actions SET enabled = false",
              "INSERT INTO actions (trigger_id) VALUES (1)", "DELETE FROM actions",
              "UPDATE triggers SET enabled = false", "UPDATE triggers SET error = 'x'", EVENT,
              "UPDATE events SET invalidated = true", "DELETE FROM deliveries",
              "SELECT 1 FROM checkpoints", "SELECT 1 FROM event_batches",
              "SELECT 1 FROM factories", "SELECT 1 FROM factory_children"],
    READONLY: ["SELECT secret FROM actions", "SELECT previous_secret FROM actions",
               "SELECT config FROM actions", "SELECT * FROM actions",
               "UPDATE triggers SET error = NULL", "UPDATE deliveries SET status = 'failed'",
               "DELETE FROM events", "INSERT INTO blocks VALUES (1, 1, '0x', '0x', now())",
               "UPDATE actions SET secret = NULL", "DELETE FROM factory_children",
               "INSERT INTO factories (chain_id, address, topic0, child_topic, child_offset)"
               " VALUES (99, '0xf2', '0xc0', 0, 0)"],
}


def _expected_grants() -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str, str]]]:
    tables, columns = set(), set()
    for table, by_role in PRIVILEGES.items():
        for role, text in by_role.items():
            for privilege, column in parse_privileges(text):
                if column is None:
                    tables.add((table, role, privilege))
                else:
                    columns.add((table, column, role, privilege))
    return tables, columns


def test_grants_in_the_database_are_exactly_the_declared_ones(db_url: str) -> None:
    """Like core.schema for tables: core.roles.PRIVILEGES is the one statement of who may do
    what, every table has a decision, and the migrated database matches it."""
    assert set(PRIVILEGES) == set(metadata.tables)
    with psycopg.connect(db_url) as conn:
        tables = set(conn.execute(_TABLE_GRANTS).fetchall())
        columns = set(conn.execute(_COLUMN_GRANTS).fetchall())
        roles = {row[0] for row in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin"
            " AND NOT rolsuper AND NOT rolcreaterole AND NOT rolcreatedb AND NOT rolbypassrls",
            (list(ROLES),)).fetchall()}
    assert roles == set(ROLES)
    assert (tables, columns) == _expected_grants()


def _setup_rows(url: str) -> None:
    with psycopg.connect(url) as conn:
        trigger_id = conn.execute("INSERT INTO triggers (name, chain_id, event_signature) VALUES"
                                  " ('t', 99, 'E()') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO actions (trigger_id, config) VALUES (%s, %s)",
                     (trigger_id, json.dumps({"url": "https://example.com", "secret": SECRET})))
        conn.execute("INSERT INTO reorgs (chain_id, depth, common_ancestor, old_head_hash,"
                     " new_head_hash, events_invalidated) VALUES (99, 1, 0, '0x1', '0x2', 0)")
        conn.execute("INSERT INTO factories (chain_id, address, topic0, child_topic, child_offset)"
                     " VALUES (99, '0xf1', '0xc0', 1, 0)")


def test_each_role_does_its_job_and_is_refused_what_it_must_not_touch(db_url: str) -> None:
    _setup_rows(db_url)
    for role in ROLES:
        with psycopg.connect(role_url(db_url, role)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
            for statement in ALLOWED[role]:
                try:
                    conn.execute(statement)
                except psycopg.Error as error:
                    pytest.fail(f"{role} was refused its job: {statement}: {error}")
                finally:
                    conn.rollback()
            for statement in REFUSED[role]:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
                conn.rollback()


def test_readonly_cannot_read_a_secret_in_any_form(plain_db_url: str) -> None:
    _setup_rows(plain_db_url)
    with psycopg.connect(role_url(plain_db_url, READONLY), autocommit=True) as conn:
        visible = conn.execute("""SELECT string_agg(t::text, ' ') FROM (
                                    SELECT id, trigger_id, type, enabled FROM actions) t""")
        assert SECRET not in (visible.fetchone()[0] or "")
        for attempt in ("SELECT secret FROM actions", "SELECT actions FROM actions",
                        "SELECT to_jsonb(a) FROM actions a",
                        "COPY actions TO STDOUT", "SELECT config->>'url' FROM actions"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attempt)


def test_status_runs_as_the_readonly_role(plain_db_url: str, redis_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": role_url(plain_db_url, READONLY), "REDIS_URL": redis_url,
           "RPC_URL": "http://127.0.0.1:1"}
    result = subprocess.run([sys.executable, "scripts/status.py", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["storage_path"] == "plain"


def test_role_creation_tolerates_a_concurrent_migration_of_another_database(
        plain_database: str) -> None:
    """Roles are cluster-wide: two migrations of two databases may create the same role at
    once. The second CREATE ROLE waits for the first transaction and then meets a unique
    violation on the catalog, which must be taken as "exists"."""
    role = f"blockhook_test_{uuid.uuid4().hex[:8]}"
    other = databases.with_database(plain_database, "postgres")
    errors: list[BaseException] = []
    try:
        with psycopg.connect(plain_database) as first:
            ensure_roles(first.execute, [role])  # created, not committed yet
            pid = first.info.backend_pid

            def second_migration() -> None:
                try:
                    with psycopg.connect(other, autocommit=True) as conn:
                        ensure_roles(conn.execute, [role])
                except BaseException as error:  # reported by the main thread
                    errors.append(error)

            racer = threading.Thread(target=second_migration)
            racer.start()
            with psycopg.connect(other, autocommit=True) as watcher:
                deadline = time.monotonic() + 20
                while not watcher.execute(
                        "SELECT count(*) FROM pg_locks l JOIN pg_locks h ON h.transactionid ="
                        " l.transactionid AND h.granted AND h.pid = %s WHERE NOT l.granted",
                        (pid,)).fetchone()[0]:
                    assert time.monotonic() < deadline, "the second CREATE ROLE never waited"
                    time.sleep(0.05)
            first.commit()
            racer.join(20)
        assert errors == []
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s",
                                (role,)).fetchone() == (1,)
    finally:
        with psycopg.connect(other, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")

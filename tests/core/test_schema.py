"""Schema: migration round trip, storage path choice, NOTIFY behaviour, constraints."""

from __future__ import annotations

import json
import os
import select
from datetime import UTC, datetime

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from core.crypto import Keyring, generate_key
from core.db import sqlalchemy_url
from core.roles import READONLY, ROLES, WORKERS
from core.schema import EVENTS_CONFLICT_TARGET, metadata
from core.sealing import seal_secrets
from tests.support import databases

ADDRESS = "0x5fbdb2315678afecb367f032d93f642f64180aa3"


def _insert_events_sql(chain_id: int, n: int, *, block_hash: str = "0xaa") -> str:
    return f"""
        INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index,
                            log_index, address, topic0, data)
        SELECT {chain_id}, g / 100, '{block_hash}' || g, now(), '0xbb', 0, g, '{ADDRESS}',
               '0xcc', '0x'
        FROM generate_series(1, {n}) AS g"""


def _drain(conn: psycopg.Connection, timeout: float = 0.5) -> list[tuple[str, str]]:
    received = []
    while select.select([conn.fileno()], [], [], timeout)[0]:
        for notify in conn.notifies(timeout=0.05, stop_after=None):
            received.append((notify.channel, notify.payload))
        timeout = 0.2
    return received


def _listener(url: str, *channels: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    for channel in channels:
        conn.execute(f"LISTEN {channel}")
    return conn


@pytest.mark.parametrize("backend", ["plain", "timescale"])
def test_migration_round_trip(request: pytest.FixtureRequest, backend: str) -> None:
    server = request.getfixturevalue("postgres_server_url" if backend == "plain" else "timescale_server_url")
    url = databases.create_database(server)
    try:
        databases.alembic(url, "upgrade", "head")
        if backend == "plain":
            _sealed_secrets_survive_a_downgrade(url)
        databases.alembic(url, "downgrade", "base")
        with psycopg.connect(url) as conn:
            leftovers = conn.execute(
                """SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'public' AND relname NOT LIKE 'alembic_version%'""").fetchall()
            functions = conn.execute(
                "SELECT proname FROM pg_proc WHERE proname LIKE 'blockhook_%'").fetchall()
            # Roles are cluster-wide and shared with other databases: they stay.
            kept = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                                (list(ROLES),)).fetchone()
        assert leftovers == [] and functions == [] and kept == (len(ROLES),)
        if backend == "plain":  # another database's grants are untouched by this downgrade
            with psycopg.connect(request.getfixturevalue("plain_database")) as conn:
                assert conn.execute("SELECT has_table_privilege(%s, 'events', 'SELECT'),"
                                    " has_column_privilege(%s, 'actions', 'secret', 'SELECT')",
                                    (READONLY, WORKERS)).fetchone() == (True, True)
        databases.alembic(url, "upgrade", "head")
        with psycopg.connect(url) as conn:
            hypertables = conn.execute(
                "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        assert hypertables == ((1,) if backend == "timescale" else (0,))
    finally:
        databases.drop_database(url)


def _sealed_secrets_survive_a_downgrade(url: str) -> None:
    """Downgrading below 0003 puts each secret back into ``config`` in plaintext: it opens
    envelopes with the key, and refuses without it rather than lose secrets."""
    secret, key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", generate_key()
    with psycopg.connect(url, autocommit=True) as conn:
        trigger_id = conn.execute("INSERT INTO triggers (name, chain_id, event_signature)"
                                  " VALUES ('t', 1, 'E()') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO actions (trigger_id, config) VALUES (%s, %s)",
                     (trigger_id, json.dumps({"url": "https://example.com", "secret": secret})))
        assert seal_secrets(conn, Keyring.from_text(key)).sealed == 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKHOOK_ENCRYPTION_KEY")}
    with pytest.raises(RuntimeError, match="set BLOCKHOOK_ENCRYPTION_KEY to downgrade"):
        databases.alembic(url, "downgrade", "0001", env=env)
    databases.alembic(url, "downgrade", "0001", env={**env, "BLOCKHOOK_ENCRYPTION_KEY": key})
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT config->>'secret' FROM actions").fetchone() == (secret,)
        conn.execute("DELETE FROM triggers")


def test_metadata_is_the_migrated_schema(db_url: str) -> None:
    """core.schema (the code's schema) and the Alembic chain describe the same tables."""
    engine = create_engine(sqlalchemy_url(db_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_events_is_a_hypertable_only_on_timescale(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        loaded = conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
        if loaded:
            dims = conn.execute(
                """SELECT column_name, time_interval FROM timescaledb_information.dimensions
                   WHERE hypertable_name = 'events'""").fetchall()
            assert [d[0] for d in dims] == ["block_time"]
            assert dims[0][1].days == 1


def test_migration_on_unpreloaded_server_builds_plain_table_and_keeps_connection(
        plain_db_url: str) -> None:
    """The extension files are installed on this machine (so pg_available_extensions lists
    TimescaleDB on the shared server) but not preloaded: the migration must not try
    CREATE EXTENSION (FATAL, connection dropped) and must build the plain table."""
    with psycopg.connect(plain_db_url) as conn:
        available = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()[0]
        created = conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'events'").fetchone()[0]
    if not available:
        pytest.skip("TimescaleDB files are not installed here; nothing to prove")
    assert created == 0 and kind == "r"


def test_bulk_insert_notifies_once_per_chain(db_url: str) -> None:
    listener = _listener(db_url, "blockhook_events")
    try:
        with psycopg.connect(db_url) as conn:
            conn.execute(_insert_events_sql(1, 10_000))
            conn.execute(_insert_events_sql(2, 10, block_hash="0xdd"))
            conn.commit()
        received = _drain(listener)
    finally:
        listener.close()
    assert sorted(received) == [("blockhook_events", "1"), ("blockhook_events", "2")]
    with psycopg.connect(db_url) as conn:
        batches = conn.execute(
            "SELECT chain_id, row_count, last_id - first_id + 1 FROM event_batches ORDER BY chain_id"
        ).fetchall()
    assert batches == [(1, 10_000, 10_000), (2, 10, 10)]


def test_reinserting_a_log_is_a_no_op_until_it_is_invalidated(db_url: str) -> None:
    """A valid log is stored once however often it is re-ingested; once invalidated by a reorg,
    the same log coming back (A -> B -> A) is stored again as a new valid event."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    row = (1, 5, "0xaa", when, "0xbb", 0, 0, ADDRESS, "0x")
    insert = f"""INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash,
                     tx_index, log_index, address, data) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)
                 ON CONFLICT {EVENTS_CONFLICT_TARGET} DO NOTHING"""
    with psycopg.connect(db_url) as conn:
        for _ in range(2):
            conn.execute(insert, row)
        assert conn.execute("SELECT id, invalidated FROM events").fetchall() == [(1, False)]
        conn.execute("UPDATE events SET invalidated = true, invalidated_at = now()")
        for _ in range(2):
            conn.execute(insert, row)
        rows = conn.execute("SELECT invalidated FROM events ORDER BY id").fetchall()
        assert rows == [(True,), (False,)]
        conn.execute("DELETE FROM events")


def test_trigger_changes_notify_but_error_writes_do_not(db_url: str) -> None:
    listener = _listener(db_url, "blockhook_triggers")
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            trigger_id = conn.execute(
                """INSERT INTO triggers (name, chain_id, event_signature)
                   VALUES ('t', 1, 'Transfer(address indexed from, address indexed to, uint256 value)')
                   RETURNING id""").fetchone()[0]
            assert _drain(listener) == [("blockhook_triggers", "triggers")]
            before = conn.execute("SELECT updated_at FROM triggers").fetchone()[0]
            conn.execute("UPDATE triggers SET confirmations = 2 WHERE id = %s", (trigger_id,))
            assert _drain(listener) == [("blockhook_triggers", "triggers")]
            assert conn.execute("SELECT updated_at FROM triggers").fetchone()[0] > before
            conn.execute("UPDATE triggers SET error = 'bad' WHERE id = %s", (trigger_id,))
            assert _drain(listener) == []
            conn.execute("INSERT INTO actions (trigger_id, config) VALUES (%s, '{}')", (trigger_id,))
            assert _drain(listener) == [("blockhook_triggers", "actions")]
            conn.execute("DELETE FROM triggers")
            assert conn.execute("SELECT count(*) FROM actions").fetchone() == (0,)
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("INSERT INTO triggers (name, chain_id, address, event_signature) VALUES ('a', 1, '0x12', 'E()')",
         "ck_triggers_address_format"),
        ("INSERT INTO triggers (name, chain_id, event_signature) VALUES ('a', 1, '  ')",
         "ck_triggers_signature_not_empty"),
        ("INSERT INTO triggers (name, chain_id, event_signature, confirmations) VALUES ('a', 1, 'E()', -1)",
         "ck_triggers_confirmations_not_negative"),
        ("INSERT INTO actions (trigger_id, type) SELECT id, 'email' FROM triggers",
         "ck_actions_type_known"),
        ("INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status) "
         "SELECT a.id, a.trigger_id, 1, 'matched', 'lost' FROM actions a", "ck_deliveries_status_known"),
        ("INSERT INTO deliveries (action_id, trigger_id, event_id, kind) "
         "SELECT a.id, a.trigger_id, 1, 'other' FROM actions a", "ck_deliveries_kind_known"),
    ],
)
def test_constraints_reject_garbage(plain_db_url: str, statement: str, constraint: str) -> None:
    with psycopg.connect(plain_db_url) as conn:
        trigger_id = conn.execute(
            "INSERT INTO triggers (name, chain_id, event_signature) VALUES ('ok', 1, 'E()') RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO actions (trigger_id) VALUES (%s)", (trigger_id,))
        conn.commit()
        with pytest.raises(psycopg.errors.CheckViolation) as raised:
            conn.execute(statement)
        assert raised.value.diag.constraint_name == constraint


def test_deliveries_leave_room_for_hot_lease_updates(db_url: str) -> None:
    """Migration 0008: pages of ``deliveries`` keep 30 % free, so the claim's lease update (no
    indexed column) is a heap-only tuple; the metadata says the same."""
    with psycopg.connect(db_url) as conn:
        options = conn.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'deliveries'").fetchone()[0]
    assert options == ["fillfactor=70"]
    assert metadata.tables["deliveries"].dialect_options["postgresql"]["with"] == {
        "fillfactor": 70}

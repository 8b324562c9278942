"""Initial schema: the user tables (docs/reference.md), internal tables, NOTIFY triggers, hypertable when loaded.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

The storage path for ``events`` is chosen here, once: a TimescaleDB hypertable on ``block_time``
when ``timescaledb`` is already in ``pg_extension`` or named in ``shared_preload_libraries``
(then the extension is created); a plain table otherwise. ``pg_available_extensions`` is *not*
consulted: once the files are installed it lists TimescaleDB on every cluster, and
``CREATE EXTENSION`` without the preload raises FATAL and drops the connection.

``EVENTS_CHUNK_INTERVAL`` (default ``1 day``) sets the hypertable's chunk interval.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

DEFAULT_CHUNK_INTERVAL = "1 day"

_TIMESCALE_LOADED = """
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
    OR coalesce(current_setting('shared_preload_libraries', true), '') ~ '(^|[ ,])timescaledb($|[ ,])'
"""


def _timestamps() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


def _create_events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("block_hash", sa.Text, nullable=False),
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tx_hash", sa.Text, nullable=False),
        sa.Column("tx_index", sa.Integer, nullable=False),
        sa.Column("log_index", sa.Integer, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("topic0", sa.Text),
        sa.Column("topic1", sa.Text),
        sa.Column("topic2", sa.Text),
        sa.Column("topic3", sa.Text),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("invalidated", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("invalidated_at", sa.DateTime(timezone=True)),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    # One valid row per log; invalidated rows leave the index so an A -> B -> A reorg stores the
    # returning log again as a new valid event (see core.schema).
    op.create_index("uq_events_log", "events", ["chain_id", "block_hash", "log_index", "block_time"],
                    unique=True, postgresql_where=sa.text("NOT invalidated"))
    op.create_index("ix_events_id", "events", ["id"])
    op.create_index("ix_events_chain_id_block_number", "events", ["chain_id", "block_number"])
    bind = op.get_bind()
    if bind.execute(sa.text(_TIMESCALE_LOADED)).scalar():
        op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        interval = os.environ.get("EVENTS_CHUNK_INTERVAL", DEFAULT_CHUNK_INTERVAL)
        bind.execute(
            sa.text("SELECT create_hypertable('events', by_range('block_time', CAST(:interval AS interval)),"
                    " migrate_data => true, create_default_indexes => false)"),
            {"interval": interval},
        )


def upgrade() -> None:
    _create_events()
    op.create_table(
        "blocks",
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("number", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.Text, nullable=False),
        sa.Column("parent_hash", sa.Text, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "number", name="pk_blocks"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("block_hash", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("chain_id", name="pk_checkpoints"),
    )
    op.create_table(
        "reorgs",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("common_ancestor", sa.BigInteger, nullable=False),
        sa.Column("old_head_hash", sa.Text, nullable=False),
        sa.Column("new_head_hash", sa.Text, nullable=False),
        sa.Column("events_invalidated", sa.Integer, nullable=False),
        sa.Column("corrected_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_reorgs"),
    )
    op.create_index("ix_reorgs_chain_id_detected_at", "reorgs", ["chain_id", "detected_at"])
    op.create_table(
        "triggers",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("address", sa.Text),
        sa.Column("event_signature", sa.Text, nullable=False),
        sa.Column("conditions", JSONB),
        sa.Column("confirmations", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("error", sa.Text),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_triggers"),
        sa.UniqueConstraint("name", name="uq_triggers_name"),
        sa.CheckConstraint("address IS NULL OR address ~ '^0x[0-9a-fA-F]{40}$'",
                           name="address_format"),
        sa.CheckConstraint("length(btrim(event_signature)) > 0", name="signature_not_empty"),
        sa.CheckConstraint("confirmations >= 0", name="confirmations_not_negative"),
        sa.CheckConstraint("length(btrim(name)) > 0", name="name_not_empty"),
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("trigger_id", sa.BigInteger, nullable=False),
        sa.Column("type", sa.Text, nullable=False, server_default=sa.text("'webhook'")),
        sa.Column("config", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.text("true")),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_actions"),
        sa.ForeignKeyConstraint(["trigger_id"], ["triggers.id"], ondelete="CASCADE",
                                name="fk_actions_trigger_id_triggers"),
        sa.CheckConstraint("type IN ('webhook')", name="type_known"),
        sa.CheckConstraint("jsonb_typeof(config) = 'object'", name="config_object"),
    )
    op.create_index("ix_actions_trigger_id", "actions", ["trigger_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("action_id", sa.BigInteger, nullable=False),
        sa.Column("trigger_id", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'pending'")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("replay", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("event_committed_at", sa.DateTime(timezone=True)),
        sa.Column("queued_at", sa.DateTime(timezone=True)),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("latency_ms", sa.Float),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(["action_id"], ["actions.id"], ondelete="CASCADE",
                                name="fk_deliveries_action_id_actions"),
        sa.ForeignKeyConstraint(["trigger_id"], ["triggers.id"], ondelete="CASCADE",
                                name="fk_deliveries_trigger_id_triggers"),
        sa.UniqueConstraint("action_id", "event_id", "kind", name="uq_deliveries_action_id_event_id_kind"),
        sa.CheckConstraint("kind IN ('matched', 'removed')", name="kind_known"),
        sa.CheckConstraint("status IN ('pending', 'queued', 'delivered', 'failed', 'cancelled')",
                           name="status_known"),
        sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    )
    op.create_index("ix_deliveries_event_id", "deliveries", ["event_id"])
    op.create_index("ix_deliveries_trigger_id", "deliveries", ["trigger_id"])
    op.create_index("ix_deliveries_created_at", "deliveries", ["created_at"])
    op.create_index("ix_deliveries_open", "deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status IN ('pending', 'queued')"))
    op.create_table(
        "event_batches",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("first_id", sa.BigInteger, nullable=False),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.Column("min_block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_event_batches"),
    )
    op.create_index("ix_event_batches_unprocessed", "event_batches", ["chain_id", "id"],
                    postgresql_where=sa.text("processed_at IS NULL"))
    op.create_table(
        "deferred_matches",
        sa.Column("action_id", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("trigger_id", sa.BigInteger, nullable=False),
        sa.Column("chain_id", sa.BigInteger, nullable=False),
        sa.Column("block_number", sa.BigInteger, nullable=False),
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at_block", sa.BigInteger, nullable=False),
        sa.Column("replay", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("action_id", "event_id", name="pk_deferred_matches"),
        sa.ForeignKeyConstraint(["action_id"], ["actions.id"], ondelete="CASCADE",
                                name="fk_deferred_matches_action_id_actions"),
        sa.ForeignKeyConstraint(["trigger_id"], ["triggers.id"], ondelete="CASCADE",
                                name="fk_deferred_matches_trigger_id_triggers"),
    )
    op.create_index("ix_deferred_matches_chain_id_ready_at_block", "deferred_matches",
                    ["chain_id", "ready_at_block"])
    op.create_index("ix_deferred_matches_event_id", "deferred_matches", ["event_id"])
    _create_functions_and_triggers()


def _create_functions_and_triggers() -> None:
    # One statement-level trigger records the batch and wakes the processor: a 10,000-row insert
    # yields one event_batches row and one NOTIFY per chain (identical payloads in a transaction
    # are also coalesced by Postgres). Works on hypertables since TimescaleDB 2.18.
    op.execute("""
        CREATE FUNCTION blockhook_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            batch record;
        BEGIN
            FOR batch IN
                SELECT chain_id, min(id) AS first_id, max(id) AS last_id,
                       min(block_time) AS min_time, max(block_time) AS max_time, count(*) AS n
                FROM new_events GROUP BY chain_id
            LOOP
                -- clock_timestamp(): as close to the commit as SQL can see (now() would be
                -- the writer's transaction start); the processor's latency figures start here.
                INSERT INTO event_batches (chain_id, first_id, last_id, min_block_time,
                                           max_block_time, row_count, created_at)
                VALUES (batch.chain_id, batch.first_id, batch.last_id, batch.min_time,
                        batch.max_time, batch.n, clock_timestamp());
                PERFORM pg_notify('blockhook_events', batch.chain_id::text);
            END LOOP;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER events_inserted AFTER INSERT ON events
        REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION blockhook_events_inserted()""")
    op.execute("""
        CREATE FUNCTION blockhook_notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('blockhook_triggers', TG_TABLE_NAME);
            RETURN NULL;
        END $$""")
    # Writes of triggers.error alone (by the processor) must not wake the processor again.
    op.execute("""
        CREATE TRIGGER triggers_changed AFTER INSERT OR DELETE OR TRUNCATE ON triggers
        FOR EACH STATEMENT EXECUTE FUNCTION blockhook_notify_config()""")
    op.execute("""
        CREATE TRIGGER triggers_updated AFTER UPDATE ON triggers FOR EACH ROW
        WHEN ((OLD.name, OLD.chain_id, OLD.address, OLD.event_signature, OLD.conditions,
               OLD.confirmations, OLD.enabled)
              IS DISTINCT FROM (NEW.name, NEW.chain_id, NEW.address, NEW.event_signature,
               NEW.conditions, NEW.confirmations, NEW.enabled))
        EXECUTE FUNCTION blockhook_notify_config()""")
    op.execute("""
        CREATE TRIGGER actions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON actions
        FOR EACH STATEMENT EXECUTE FUNCTION blockhook_notify_config()""")
    op.execute("""
        CREATE FUNCTION blockhook_notify_chain() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(TG_ARGV[0], NEW.chain_id::text);
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER reorgs_inserted AFTER INSERT ON reorgs FOR EACH ROW
        EXECUTE FUNCTION blockhook_notify_chain('blockhook_reorgs')""")
    op.execute("""
        CREATE TRIGGER checkpoints_moved AFTER INSERT OR UPDATE ON checkpoints FOR EACH ROW
        EXECUTE FUNCTION blockhook_notify_chain('blockhook_checkpoints')""")
    op.execute("""
        CREATE FUNCTION blockhook_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END $$""")
    for table in ("triggers", "actions", "deliveries", "checkpoints"):
        op.execute(f"""
            CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table} FOR EACH ROW
            EXECUTE FUNCTION blockhook_touch_updated_at()""")


def downgrade() -> None:
    for table in ("deferred_matches", "event_batches", "deliveries", "actions", "triggers",
                  "reorgs", "checkpoints", "blocks", "events"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    for function in ("blockhook_events_inserted", "blockhook_notify_config",
                     "blockhook_notify_chain", "blockhook_touch_updated_at"):
        op.execute(f"DROP FUNCTION IF EXISTS {function}() CASCADE")

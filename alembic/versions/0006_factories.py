"""Factory triggers: a trigger may name a factory instead of an address; the factory's children
are kept in ``factory_children``, maintained by the database from the stored events.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

- ``triggers.factory_address``, ``factory_event_signature``, ``factory_parameter`` (all three or
  none; not together with ``address``). A change to them wakes the processor like any other
  trigger change.
- ``factories``: the factories triggers name, registered by the processor (``core.factories``).
- ``factory_children``: one row per valid creation log of a registered factory. Two
  statement-level triggers on ``events`` keep it, in the writing transaction, on both storage
  paths (transition tables work on hypertables since TimescaleDB 2.18): after an insert, the
  creation logs among the new rows add their children (so a child is visible exactly when the
  range creating it is); after an update, the rows that became invalidated (a reorg) take their
  children with them. ``blockhook_child_address`` reads the child from a log, the rule
  ``core.factories.Factory.child_of`` states in Python.

Grants from :data:`core.roles.PRIVILEGES`: the indexer's role writes children through the
triggers, the processor's registers factories and backfills their children.
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from core import roles

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_WATCHED = ("name", "chain_id", "address", "event_signature", "conditions", "confirmations",
            "enabled")
_FACTORY_COLUMNS = ("factory_address", "factory_event_signature", "factory_parameter")


def _triggers_updated(columns: tuple[str, ...]) -> str:
    old = ", ".join(f"OLD.{c}" for c in columns)
    new = ", ".join(f"NEW.{c}" for c in columns)
    return f"""
        CREATE TRIGGER triggers_updated AFTER UPDATE ON triggers FOR EACH ROW
        WHEN (({old}) IS DISTINCT FROM ({new}))
        EXECUTE FUNCTION blockhook_notify_config()"""


def upgrade() -> None:
    op.add_column("triggers", sa.Column("factory_address", sa.Text()))
    op.add_column("triggers", sa.Column("factory_event_signature", sa.Text()))
    op.add_column("triggers", sa.Column("factory_parameter", sa.Text()))
    op.create_check_constraint(
        "factory_address_format", "triggers",
        "factory_address IS NULL OR factory_address ~ '^0x[0-9a-fA-F]{40}$'")
    op.create_check_constraint("address_or_factory", "triggers",
                               "address IS NULL OR factory_address IS NULL")
    op.create_check_constraint(
        "factory_complete", "triggers",
        "(factory_address IS NULL) = (factory_event_signature IS NULL) "
        "AND (factory_address IS NULL) = (factory_parameter IS NULL)")
    op.execute("DROP TRIGGER triggers_updated ON triggers")
    op.execute(_triggers_updated(_WATCHED + _FACTORY_COLUMNS))

    op.create_table(
        "factories",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("topic0", sa.Text(), nullable=False),
        sa.Column("child_topic", sa.SmallInteger(), nullable=False),
        sa.Column("child_offset", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="pk_factories"),
        sa.UniqueConstraint("chain_id", "address", "topic0", "child_topic", "child_offset",
                            name="uq_factories_chain_id_address_topic0_child_topic_child_offset"),
        sa.CheckConstraint("child_topic BETWEEN 0 AND 3", name="child_topic_range"),
        sa.CheckConstraint("child_offset >= 0 AND (child_topic = 0 OR child_offset = 0)",
                           name="child_offset_range"),
    )
    op.create_table(
        "factory_children",
        sa.Column("factory_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("child_address", sa.Text(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.Text(), nullable=False),
        sa.Column("block_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("factory_id", "event_id", name="pk_factory_children"),
        sa.ForeignKeyConstraint(["factory_id"], ["factories.id"], ondelete="CASCADE",
                                name="fk_factory_children_factory_id_factories"),
    )
    op.create_index("ix_factory_children_chain_id_child_address", "factory_children",
                    ["chain_id", "child_address"])
    op.create_index("ix_factory_children_event_id", "factory_children", ["event_id"])

    op.execute("""
        CREATE FUNCTION blockhook_child_address(child_topic smallint, child_offset integer,
                                                topic1 text, topic2 text, topic3 text, data text)
        RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT CASE
                WHEN child_topic = 0 THEN
                    CASE WHEN length(data) >= 2 + 2 * child_offset + 64
                         THEN '0x' || lower(substr(data, 3 + 2 * child_offset + 24, 40)) END
                ELSE (SELECT CASE WHEN length(t) = 66 THEN '0x' || lower(substr(t, 27, 40)) END
                      FROM (SELECT (ARRAY[topic1, topic2, topic3])[child_topic] AS t) AS topic)
            END
        $$""")
    # Events' addresses and topics are stored lowercase (the indexer lowercases replies).
    op.execute("""
        CREATE FUNCTION blockhook_events_children_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT FROM factories) THEN
                INSERT INTO factory_children (factory_id, chain_id, child_address, block_number,
                                              block_hash, block_time, log_index, event_id)
                SELECT f.id, e.chain_id, c.child, e.block_number, e.block_hash, e.block_time,
                       e.log_index, e.id
                FROM new_events e
                JOIN factories f ON f.chain_id = e.chain_id AND f.address = e.address
                                AND f.topic0 = e.topic0
                CROSS JOIN LATERAL blockhook_child_address(f.child_topic, f.child_offset,
                                                           e.topic1, e.topic2, e.topic3,
                                                           e.data) AS c(child)
                WHERE NOT e.invalidated AND c.child IS NOT NULL
                ON CONFLICT DO NOTHING;
            END IF;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER events_children_inserted AFTER INSERT ON events
        REFERENCING NEW TABLE AS new_events
        FOR EACH STATEMENT EXECUTE FUNCTION blockhook_events_children_inserted()""")
    # Transition tables cannot go with a column list (UPDATE OF invalidated): every update of
    # events is an invalidation anyway.
    op.execute("""
        CREATE FUNCTION blockhook_events_children_invalidated() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM factory_children c
            USING updated_events u
            WHERE u.invalidated AND c.event_id = u.id;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE TRIGGER events_children_invalidated AFTER UPDATE ON events
        REFERENCING NEW TABLE AS updated_events
        FOR EACH STATEMENT EXECUTE FUNCTION blockhook_events_children_invalidated()""")
    roles.grant(op.execute, "factories", "factory_children")


def downgrade() -> None:
    op.execute("DROP TRIGGER events_children_invalidated ON events")
    op.execute("DROP TRIGGER events_children_inserted ON events")
    op.execute("DROP FUNCTION blockhook_events_children_invalidated()")
    op.execute("DROP FUNCTION blockhook_events_children_inserted()")
    op.execute("DROP FUNCTION blockhook_child_address(smallint, integer, text, text, text, text)")
    op.drop_table("factory_children")
    op.drop_table("factories")
    op.execute("DROP TRIGGER triggers_updated ON triggers")
    op.execute(_triggers_updated(_WATCHED))
    op.drop_constraint("ck_triggers_factory_complete", "triggers")
    op.drop_constraint("ck_triggers_address_or_factory", "triggers")
    op.drop_constraint("ck_triggers_factory_address_format", "triggers")
    for column in reversed(_FACTORY_COLUMNS):
        op.drop_column("triggers", column)

"""The one schema source: SQLAlchemy Core tables for Alembic and the code.

User-facing tables are the user tables (docs/reference.md). Internal tables:

- ``event_batches``: one row per insert statement into ``events`` (written by a statement-level
  trigger, in the inserting transaction). The processor claims unprocessed batches with
  ``FOR UPDATE SKIP LOCKED``; a batch's id range and ``block_time`` range locate its events
  exactly and let TimescaleDB exclude chunks. Nothing relies on ids committing in order.
- ``deferred_matches``: matches of triggers with ``confirmations > 0`` waiting for depth.
- ``rpc_endpoints``: the indexer's view of each ``RPC_URL`` endpoint (state, head, health), kept
  current by the active indexer of each chain and read by ``scripts/status.py``. Endpoints are
  stored by position and *redacted* URL only: no API key reaches the database.

- ``factories`` / ``factory_children``: the factories factory triggers name (registered by the
  processor) and one row per valid creation log, kept by triggers on ``events`` (``core.factories``).

``events`` is a TimescaleDB hypertable on ``block_time`` where TimescaleDB is loaded, a plain
table otherwise (the migration decides); unique constraints include ``block_time`` on both paths.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

# NOTIFY channels live in core.channels (no SQLAlchemy needed to listen); importable from here too.
from core.channels import (  # noqa: F401
    CHANNEL_CHECKPOINTS,
    CHANNEL_EVENTS,
    CHANNEL_REORGS,
    CHANNEL_SECRETS,
    CHANNEL_TRIGGERS,
)
from core.event_keys import EVENTS_CONFLICT_TARGET  # noqa: F401 - re-exported beside its index

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

ADDRESS_PATTERN = "^0x[0-9a-fA-F]{40}$"
DELIVERY_KINDS = ("matched", "removed")
DELIVERY_STATUSES = ("pending", "queued", "delivered", "failed", "cancelled")
ACTION_TYPES = ("webhook",)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


events = Table(
    "events",
    metadata,
    Column("id", BigInteger, Identity(always=False), nullable=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", Text, nullable=False),
    Column("block_time", DateTime(timezone=True), nullable=False),
    Column("tx_hash", Text, nullable=False),
    Column("tx_index", Integer, nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("address", Text, nullable=False),
    Column("topic0", Text),
    Column("topic1", Text),
    Column("topic2", Text),
    Column("topic3", Text),
    Column("data", Text, nullable=False),
    Column("invalidated", Boolean, nullable=False, server_default=text("false")),
    Column("invalidated_at", DateTime(timezone=True)),
    Column("ingested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # One *valid* row per log. The partitioning column is part of every unique index (TimescaleDB
    # requires it). Invalidated rows are outside the index, so a log whose block comes back after
    # a reorg (A -> B -> A) is stored again as a new, valid event with a new id, and fires again;
    # its invalidated twin keeps its deliveries (and its event.removed).
    Index("uq_events_log", "chain_id", "block_hash", "log_index", "block_time", unique=True,
          postgresql_where=text("NOT invalidated")),
    Index(None, "id"),
    Index(None, "chain_id", "block_number"),
)

# ON CONFLICT target matching ``uq_events_log``: ``core.event_keys.EVENTS_CONFLICT_TARGET``.

blocks = Table(
    "blocks",
    metadata,
    Column("chain_id", BigInteger, primary_key=True),
    Column("number", BigInteger, primary_key=True),
    Column("hash", Text, nullable=False),
    Column("parent_hash", Text, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("chain_id", BigInteger, primary_key=True),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

reorgs = Table(
    "reorgs",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("depth", Integer, nullable=False),
    Column("common_ancestor", BigInteger, nullable=False),
    Column("old_head_hash", Text, nullable=False),
    Column("new_head_hash", Text, nullable=False),
    Column("events_invalidated", Integer, nullable=False),
    # Internal: set by the processor once deliveries of the invalidated events are corrected.
    Column("corrected_at", DateTime(timezone=True)),
    Index(None, "chain_id", "detected_at"),
)

triggers = Table(
    "triggers",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("address", Text),
    Column("event_signature", Text, nullable=False),
    Column("conditions", JSONB),
    Column("confirmations", Integer, nullable=False, server_default=text("0")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # A factory instead of an address (migration 0006): the trigger watches every contract the
    # factory creates, found by the creation event's parameter holding the child's address.
    Column("factory_address", Text),
    Column("factory_event_signature", Text),
    Column("factory_parameter", Text),
    CheckConstraint(f"address IS NULL OR address ~ '{ADDRESS_PATTERN}'", name="address_format"),
    CheckConstraint(f"factory_address IS NULL OR factory_address ~ '{ADDRESS_PATTERN}'",
                    name="factory_address_format"),
    CheckConstraint("address IS NULL OR factory_address IS NULL", name="address_or_factory"),
    CheckConstraint("(factory_address IS NULL) = (factory_event_signature IS NULL) "
                    "AND (factory_address IS NULL) = (factory_parameter IS NULL)",
                    name="factory_complete"),
    CheckConstraint("length(btrim(event_signature)) > 0", name="signature_not_empty"),
    CheckConstraint("confirmations >= 0", name="confirmations_not_negative"),
    CheckConstraint("length(btrim(name)) > 0", name="name_not_empty"),
)

actions = Table(
    "actions",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("trigger_id", BigInteger, ForeignKey("triggers.id", ondelete="CASCADE"), nullable=False),
    Column("type", Text, nullable=False, server_default=text("'webhook'")),
    Column("config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The signing secret, taken out of ``config`` by a BEFORE trigger on every write: plaintext
    # ``whsec_…`` until the workers seal it (``enc:v1:…``, core.crypto), or for good without a
    # key. Only the workers' role may read these columns (core.roles).
    Column("secret", Text),
    # During an endpoint secret rotation: the replaced secret, signed with too until it expires.
    Column("previous_secret", Text),
    Column("previous_secret_expires_at", DateTime(timezone=True)),
    CheckConstraint(_in("type", ACTION_TYPES), name="type_known"),
    CheckConstraint("jsonb_typeof(config) = 'object'", name="config_object"),
    CheckConstraint("(previous_secret IS NULL) = (previous_secret_expires_at IS NULL)",
                    name="previous_secret_expiry"),
    Index(None, "trigger_id"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("action_id", BigInteger, ForeignKey("actions.id", ondelete="CASCADE"), nullable=False),
    Column("trigger_id", BigInteger, ForeignKey("triggers.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("delivered_at", DateTime(timezone=True)),
    # Internal columns (not part of the user contract, shown by status and the README):
    Column("replay", Boolean, nullable=False, server_default=text("false")),
    Column("event_committed_at", DateTime(timezone=True)),
    Column("queued_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("latency_ms", Float),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The lease of the attempt in flight (workers.store): who claimed it and until when.
    Column("leased_by", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    UniqueConstraint("action_id", "event_id", "kind"),
    CheckConstraint(_in("kind", DELIVERY_KINDS), name="kind_known"),
    CheckConstraint(_in("status", DELIVERY_STATUSES), name="status_known"),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    Index(None, "event_id"),
    Index(None, "trigger_id"),
    Index(
        "ix_deliveries_open",
        "next_attempt_at",
        postgresql_where=text("status IN ('pending', 'queued')"),
    ),
    Index(None, "created_at"),
    # Room in each page for the claim's lease update to be HOT (migration 0008).
    postgresql_with={"fillfactor": 70},
)

event_batches = Table(
    "event_batches",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("first_id", BigInteger, nullable=False),
    Column("last_id", BigInteger, nullable=False),
    Column("min_block_time", DateTime(timezone=True), nullable=False),
    Column("max_block_time", DateTime(timezone=True), nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("processed_at", DateTime(timezone=True)),
    Index("ix_event_batches_unprocessed", "chain_id", "id", postgresql_where=text("processed_at IS NULL")),
)

deferred_matches = Table(
    "deferred_matches",
    metadata,
    Column("action_id", BigInteger, ForeignKey("actions.id", ondelete="CASCADE"), primary_key=True),
    Column("event_id", BigInteger, primary_key=True),
    Column("trigger_id", BigInteger, ForeignKey("triggers.id", ondelete="CASCADE"), nullable=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("block_number", BigInteger, nullable=False),
    Column("block_time", DateTime(timezone=True), nullable=False),
    Column("ready_at_block", BigInteger, nullable=False),
    Column("replay", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index(None, "chain_id", "ready_at_block"),
    Index(None, "event_id"),
)

rpc_endpoints = Table(
    "rpc_endpoints",
    metadata,
    Column("chain_id", BigInteger, primary_key=True),
    Column("position", Integer, primary_key=True),  # 0-based place in RPC_URL
    Column("endpoint", Text, nullable=False),  # redacted URL (core.redact)
    Column("state", Text, nullable=False),
    Column("head", BigInteger),
    Column("lag_blocks", Integer),
    Column("health_score", Float, nullable=False),
    Column("latency_ms", Float),
    Column("requests", BigInteger, nullable=False, server_default=text("0")),
    Column("errors", BigInteger, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Factories named by triggers, registered by the processor (core.factories). Kept when no trigger
# names them any more: re-adding a trigger then finds its children already known.
factories = Table(
    "factories",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("address", Text, nullable=False),  # lowercase
    Column("topic0", Text, nullable=False),  # the creation event's
    # Where a creation log holds the child's address: topic 1-3, or 0 for the data word at
    # byte child_offset.
    Column("child_topic", SmallInteger, nullable=False),
    Column("child_offset", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("chain_id", "address", "topic0", "child_topic", "child_offset"),
    CheckConstraint("child_topic BETWEEN 0 AND 3", name="child_topic_range"),
    CheckConstraint("child_offset >= 0 AND (child_topic = 0 OR child_offset = 0)",
                    name="child_offset_range"),
)

# One row per valid creation log of a registered factory: written by the database (triggers on
# ``events``, migration 0006) in the transaction that stores the log, deleted when a reorg
# invalidates it; the backfill of a newly registered factory writes the older ones.
factory_children = Table(
    "factory_children",
    metadata,
    Column("factory_id", BigInteger, ForeignKey("factories.id", ondelete="CASCADE"),
           primary_key=True),
    Column("event_id", BigInteger, primary_key=True),  # the creation log
    Column("chain_id", BigInteger, nullable=False),
    Column("child_address", Text, nullable=False),  # lowercase
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", Text, nullable=False),
    Column("block_time", DateTime(timezone=True), nullable=False),
    Column("log_index", Integer, nullable=False),
    Index(None, "chain_id", "child_address"),
    Index(None, "event_id"),
)

"""Retention runs as the processor's role: DELETE where it prunes, and the owner-only TimescaleDB
calls behind three SECURITY DEFINER functions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

``drop_chunks``, ``compress_chunk`` and enabling compression need the owner of ``events``; the
processor (``blockhook_processor``) runs the retention pass but must not own the table (an owner
may alter or drop it). So on the hypertable path this revision creates, owned by the migrating
role and executable only by the processor's role:

- ``blockhook_drop_event_chunks(older_than timestamptz) → setof text``: ``drop_chunks`` on
  ``events`` only. The caller holds ``LOCK TABLE ONLY events IN EXCLUSIVE MODE`` and has computed
  the horizon; it could already ``DELETE`` those rows, so this grants no new power over data.
- ``blockhook_enable_events_compression(segment_by text, order_by text)``: compression settings
  on ``events`` only, with identifiers checked against its columns.
- ``blockhook_compress_event_chunk(chunk regclass) → regclass``: ``compress_chunk`` on a chunk of
  ``events`` only (anything else is refused).

Grants are re-applied from :data:`core.roles.PRIVILEGES` for the tables retention prunes.
"""

from __future__ import annotations

from alembic import op
from core import roles

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PRUNED_TABLES = ("events", "event_batches", "deliveries", "reorgs", "blocks")
FUNCTIONS = ("blockhook_drop_event_chunks(timestamptz)",
             "blockhook_enable_events_compression(text, text)",
             "blockhook_compress_event_chunk(regclass)")

_IS_HYPERTABLE = """
SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL
   AND EXISTS (SELECT FROM timescaledb_information.hypertables
               WHERE hypertable_schema = current_schema() AND hypertable_name = 'events')
"""


def _is_hypertable() -> bool:
    # The view exists only with the extension; ask in two steps so the plain path never names it.
    bind = op.get_bind()
    if bind.exec_driver_sql(
            "SELECT to_regclass('timescaledb_information.hypertables') IS NULL").scalar():
        return False
    return bool(bind.exec_driver_sql(_IS_HYPERTABLE).scalar())


def upgrade() -> None:
    roles.grant(op.execute, *PRUNED_TABLES)
    if not _is_hypertable():
        return
    # search_path is pinned (SECURITY DEFINER): the extension's functions live in the schema it
    # was created in, the table in this one.
    op.execute("""
        CREATE FUNCTION blockhook_drop_event_chunks(older_than timestamptz) RETURNS SETOF text
        LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
            SELECT drop_chunks('events'::regclass, older_than => older_than)
        $$""")
    op.execute("""
        CREATE FUNCTION blockhook_enable_events_compression(segment_by text, order_by text)
        RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        DECLARE
            name text;
        BEGIN
            FOREACH name IN ARRAY string_to_array(segment_by || ',' || order_by, ',') LOOP
                IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'events'::regclass
                               AND attname = btrim(name) AND attnum > 0 AND NOT attisdropped) THEN
                    RAISE EXCEPTION 'events has no column %', quote_literal(btrim(name));
                END IF;
            END LOOP;
            EXECUTE format('ALTER TABLE events SET (timescaledb.compress, '
                           'timescaledb.compress_segmentby = %L, timescaledb.compress_orderby = %L)',
                           segment_by, order_by);
        END $$""")
    op.execute("""
        CREATE FUNCTION blockhook_compress_event_chunk(chunk regclass) RETURNS regclass
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
        BEGIN
            IF NOT EXISTS (SELECT FROM timescaledb_information.chunks c
                           WHERE c.hypertable_schema = current_schema()
                             AND c.hypertable_name = 'events'
                             AND format('%I.%I', c.chunk_schema, c.chunk_name)::regclass = chunk) THEN
                RAISE EXCEPTION '% is not a chunk of events', chunk;
            END IF;
            RETURN compress_chunk(chunk, if_not_compressed => true);
        END $$""")
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {roles.PROCESSOR}")


def downgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    # The processor's role loses what retention needed (0003's grants).
    op.execute(f"REVOKE DELETE ON events, deliveries, reorgs, blocks FROM {roles.PROCESSOR}")
    op.execute(f"REVOKE SELECT ON blocks FROM {roles.PROCESSOR}")

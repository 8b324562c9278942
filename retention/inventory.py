"""What the database holds, per table: disk size, estimated rows, the oldest row. Read-only and
cheap (catalog estimates and index probes, no full scans), for ``status`` and the metrics."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import BaseModel

from retention.events import chains_in_events

# The column that dates a row, per table ("oldest row"). ``events``: see _OLDEST_EVENT.
OLDEST_BY = {
    "blocks": "time", "checkpoints": "updated_at", "reorgs": "detected_at",
    "deliveries": "created_at", "event_batches": "created_at", "deferred_matches": "created_at",
    "triggers": "created_at", "actions": "created_at",
}

# The oldest event of a chain is its first by block number (block times do not decrease along
# a chain): one index probe per chain instead of a scan (there is no block_time index).
_FIRST_EVENT_TIME = """
SELECT block_time FROM events WHERE chain_id = $1 ORDER BY block_number LIMIT 1
"""
_PLAIN_SIZES = """
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes,
       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS rows
FROM pg_class c WHERE c.oid = to_regclass($1)
"""
_HYPERTABLE_SIZE = """
SELECT hypertable_size('events') AS bytes, approximate_row_count('events') AS rows
"""


class TableStat(BaseModel):
    """One table: ``bytes`` with indexes and TOAST; ``rows`` is Postgres's estimate (``None``
    before the table was first analysed); ``oldest``: its oldest row's date column."""

    name: str
    bytes: int
    rows: int | None
    oldest: datetime | None
    oldest_column: str | None


async def table_sizes(conn: asyncpg.Connection, *, storage: str) -> dict[str, tuple[int, int | None]]:
    """Bytes and estimated rows per blockhook table (``events`` as a whole hypertable)."""
    # The table names come from the schema's one source, SQLAlchemy Core metadata, imported
    # here and not at module level: SQLAlchemy is ~0.3 s of start-up, and the processor (which
    # runs retention) has no other use for it.
    from core.schema import metadata

    sizes: dict[str, tuple[int, int | None]] = {}
    for name in sorted(metadata.tables):
        if name == "events" and storage == "timescaledb":
            row = await conn.fetchrow(_HYPERTABLE_SIZE)
        else:
            row = await conn.fetchrow(_PLAIN_SIZES, name)
        if row is not None:
            sizes[name] = (int(row["bytes"] or 0), row["rows"])
    return sizes


async def table_stats(conn: asyncpg.Connection, *, storage: str) -> list[TableStat]:
    """Size, estimated rows and oldest row of every blockhook table, largest first."""
    stats = []
    for name, (size, rows) in (await table_sizes(conn, storage=storage)).items():
        column = "block_time" if name == "events" else OLDEST_BY.get(name)
        if name == "events":
            firsts = [await conn.fetchval(_FIRST_EVENT_TIME, chain_id)
                      for chain_id in await chains_in_events(conn)]
            oldest = min((t for t in firsts if t is not None), default=None)
        elif column:
            oldest = await conn.fetchval(f"SELECT min({column}) FROM {name}")
        else:
            oldest = None
        stats.append(TableStat(name=name, bytes=size, rows=rows, oldest=oldest,
                               oldest_column=column))
    return sorted(stats, key=lambda stat: (-stat.bytes, stat.name))

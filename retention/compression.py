"""Compression of old ``events`` chunks, where TimescaleDB's license allows it.

Compression is a TimescaleDB Community (``timescaledb.license = 'timescale'``) feature; the
Apache-2 edition has none. Detected at every start, never assumed:

- ``events`` is a plain table → not applicable;
- license ``apache`` → unavailable (one log line, and ``status`` says so);
- ``EVENTS_COMPRESS_AFTER=forever`` → off;
- otherwise compression is enabled on the hypertable if it is not yet (``ALTER TABLE`` through the
  owner's definer function of migration 0005, so the processor's role can; a refusal is
  reported, not fatal), and every pass compresses the chunks whose whole
  range is older than ``EVENTS_COMPRESS_AFTER`` and than the oldest protected event.

Settings: segments by ``chain_id`` (every query names one chain, or an id), ordered by
``block_number, log_index`` then ``block_time, id`` — every ``orderby`` column gets per-batch
min/max metadata, which is what lets TimescaleDB skip compressed batches for the queries that
reach old chunks: replay and refire (block range), the conflict check of a replayed insert
(``block_time``) and lookups by ``id``. Compressed chunks stay readable and writable
(TimescaleDB ≥ 2.11: INSERT … ON CONFLICT, UPDATE and DELETE decompress the batches they touch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from core.db import storage_path

SEGMENT_BY = "chain_id"
ORDER_BY = "block_number, log_index, block_time, id"

_LICENSE = "SELECT current_setting('timescaledb.license', true)"
_ENABLED = """
SELECT compression_enabled FROM timescaledb_information.hypertables
WHERE hypertable_schema = current_schema() AND hypertable_name = 'events'
"""
# Owner-only operations, through the definer functions of migration 0005 (the processor's role
# does not own events).
_ENABLE = "SELECT blockhook_enable_events_compression($1, $2)"
_UNCOMPRESSED_BEFORE = """
SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk
FROM timescaledb_information.chunks
WHERE hypertable_schema = current_schema() AND hypertable_name = 'events'
  AND range_end <= $1 AND NOT is_compressed
ORDER BY range_start
"""
_COMPRESS = "SELECT blockhook_compress_event_chunk($1::regclass)"
_STATS = """
SELECT count(*) FILTER (WHERE is_compressed) AS compressed, count(*) AS chunks
FROM timescaledb_information.chunks
WHERE hypertable_schema = current_schema() AND hypertable_name = 'events'
"""


@dataclass(frozen=True)
class CompressionState:
    """``state``: ``active``, ``off``, ``unavailable``, ``not applicable`` or ``failed``."""

    state: str
    detail: str
    license: str | None = None

    @property
    def active(self) -> bool:
        return self.state == "active"


async def detect(conn: asyncpg.Connection, *, enabled_by_settings: bool,
                 enable: bool) -> CompressionState:
    """Where compression stands; with ``enable``, turn it on for ``events`` when the license
    allows it and it is not on yet (through the owner's definer function)."""
    if await storage_path(conn) != "timescaledb":
        return CompressionState("not applicable", "events is a plain table (no TimescaleDB)")
    license_name = await conn.fetchval(_LICENSE)
    if license_name != "timescale":
        return CompressionState(
            "unavailable", f"TimescaleDB license is {license_name!r}: this edition has no "
            "compression (the Community edition, license 'timescale', has)", license_name)
    if not enabled_by_settings:
        return CompressionState("off", "EVENTS_COMPRESS_AFTER=forever", license_name)
    if not await conn.fetchval(_ENABLED):
        if not enable:
            return CompressionState("off", "compression is not enabled on events yet (the "
                                    "processor enables it at its next retention pass)",
                                    license_name)
        try:
            await conn.execute(_ENABLE, SEGMENT_BY, ORDER_BY)
        except asyncpg.PostgresError as error:
            return CompressionState("failed", f"cannot enable compression on events: {error} "
                                    "(is the database migrated to head?)",
                                    license_name)
    stats = await conn.fetchrow(_STATS)
    return CompressionState("active", f"{stats['compressed']} of {stats['chunks']} chunks "
                            "compressed", license_name)


async def compress_due(conn: asyncpg.Connection, *, before: datetime, limit: int = 1) -> list[str]:
    """Compress up to ``limit`` uncompressed chunks entirely older than ``before``, oldest
    first; return their names. Each is one statement (TimescaleDB locks the chunk meanwhile)."""
    compressed = []
    for row in (await conn.fetch(_UNCOMPRESSED_BEFORE, before))[:limit]:
        await conn.execute(_COMPRESS, row["chunk"])
        compressed.append(row["chunk"])
    return compressed


async def compressible(conn: asyncpg.Connection, *, before: datetime) -> list[str]:
    """The chunks :func:`compress_due` would compress (for a dry run)."""
    return [row["chunk"] for row in await conn.fetch(_UNCOMPRESSED_BEFORE, before)]

"""What a retention pass would do now, without doing it: the horizon of each kind of data, what
holds the events horizon back, and (for a dry run) the rows and chunks that would go.

Read-only: no lock, no write, compression not enabled. The counts use the very predicates the
pass deletes with (:mod:`retention.bookkeeping`, :mod:`retention.events`), so a dry run and the
pass that follows agree, up to what changes in between.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from pydantic import BaseModel

from core.db import storage_path
from retention.bookkeeping import count_doomed
from retention.compression import compressible, detect
from retention.events import chunk_size, count_plain, due_chunks
from retention.guards import chain_guards, floor, pins
from retention.policy import BLOCKS_MARGIN, RetentionPolicy


class PinReport(BaseModel):
    since: datetime
    reason: str


class Horizon(BaseModel):
    """``settings``: the retention settings as written; ``cutoffs``: the moment before which each
    kind is old enough (``None``: kept forever); ``events_effective``: the events cutoff held
    back by the oldest protected event (``held_back_by``, oldest first)."""

    now: datetime
    storage: str
    settings: dict[str, str]
    cutoffs: dict[str, datetime | None]
    events_effective: datetime | None
    held_back_by: list[PinReport]
    compression: str
    compression_detail: str


class ChunkReport(BaseModel):
    chunk: str
    range_start: datetime
    range_end: datetime
    rows: int
    bytes: int


class Plan(BaseModel):
    """A dry run: the horizon, rows per table that would be deleted, events chunks that would be
    dropped (TimescaleDB) and compressed (where available)."""

    horizon: Horizon
    would_delete: dict[str, int]
    chunks_to_drop: list[ChunkReport]
    chunks_to_compress: list[str]


async def horizon(conn: asyncpg.Connection, policy: RetentionPolicy, *,
                  now: datetime | None = None) -> Horizon:
    """The cutoffs and what holds the events horizon back (guards and pins: index probes)."""
    now = now or await conn.fetchval("SELECT now()")
    cutoffs = policy.cutoffs(now)
    held: list[PinReport] = []
    effective = None
    if cutoffs.events is not None:
        found = await pins(conn, await chain_guards(conn, reorg_window=policy.reorg_window))
        effective, _ = floor(cutoffs.events, found)
        held = [PinReport(since=pin.since, reason=pin.reason) for pin in found
                if pin.since < cutoffs.events]
    compression = await detect(conn, enabled_by_settings=policy.compress_after is not None,
                               enable=False)
    return Horizon(now=now, storage=await storage_path(conn), settings=policy.describe(),
                   cutoffs={"events": cutoffs.events, "event_batches": cutoffs.event_batches,
                            "deliveries": cutoffs.deliveries, "reorgs": cutoffs.reorgs,
                            "events_compress": cutoffs.compress},
                   events_effective=effective, held_back_by=held,
                   compression=compression.state, compression_detail=compression.detail)


async def plan(conn: asyncpg.Connection, policy: RetentionPolicy, *,
               now: datetime | None = None) -> Plan:
    """What a pass would delete and compress now (``--dry-run``)."""
    current = await horizon(conn, policy, now=now)
    cutoffs = current.cutoffs
    guards = await chain_guards(conn, reorg_window=policy.reorg_window)
    would_delete = await count_doomed(conn, cutoffs=cutoffs, guards=guards,
                                      keep_blocks=policy.reorg_window + BLOCKS_MARGIN)
    chunks: list[ChunkReport] = []
    if current.events_effective is not None:
        if current.storage == "timescaledb":
            for chunk in await due_chunks(conn, current.events_effective):
                rows, size = await chunk_size(conn, chunk)
                chunks.append(ChunkReport(chunk=chunk["chunk"], range_start=chunk["range_start"],
                                          range_end=chunk["range_end"], rows=rows, bytes=size))
            would_delete["events"] = sum(chunk.rows for chunk in chunks)
        else:
            assert cutoffs["events"] is not None
            would_delete["events"] = await count_plain(conn, cutoff=cutoffs["events"],
                                                       reorg_window=policy.reorg_window)
    to_compress: list[str] = []
    compress_before = cutoffs["events_compress"]
    if current.compression == "active" and compress_before is not None:
        to_compress = await compressible(conn, before=compress_before)
    return Plan(horizon=current, would_delete=would_delete, chunks_to_drop=chunks,
                chunks_to_compress=to_compress)

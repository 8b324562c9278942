"""The database side of ingest: plain functions on an asyncpg connection.

The caller owns the transaction. Every write is idempotent: events go through a temporary
staging table (``COPY``) and ``INSERT … SELECT … ON CONFLICT`` on
``core.event_keys.EVENTS_CONFLICT_TARGET`` ``DO NOTHING``, so re-ingesting a log changes nothing;
blocks are upserted by ``(chain_id, number)``. Blocks, events and the checkpoint of one range
commit together (:func:`store_range`), so the checkpoint never passes data not stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from core.db import writer_lock_key
from core.event_keys import EVENTS_CONFLICT_TARGET
from ingest.endpoints import EndpointStatus
from ingest.rpc import Header, Log

STAGING_TABLE = "ingest_logs_staging"
# The staging table has exactly the fields of ``ingest.rpc.Log``, so the parsed logs are COPYed as
# they are (no second tuple per log: measured ~1 µs a log, a tenth of the indexer's Python time);
# chain id and block time join in on the way to ``events``.
LOG_COLUMNS = Log._fields
EVENT_COLUMNS = ("chain_id", "block_number", "block_hash", "block_time", "tx_hash", "tx_index",
                 "log_index", "address", "topic0", "topic1", "topic2", "topic3", "data")

_CREATE_STAGING = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (
    block_number bigint, block_hash text, tx_hash text, tx_index integer, log_index integer,
    address text, topic0 text, topic1 text, topic2 text, topic3 text, data text
) ON COMMIT DELETE ROWS"""

# $1 chain, $2/$3 block numbers and times. ids follow chain order within a statement: the
# processor evaluates in id order.
_INSERT_EVENTS = f"""
INSERT INTO events ({", ".join(EVENT_COLUMNS)})
SELECT $1, s.block_number, s.block_hash, t.time, s.tx_hash, s.tx_index, s.log_index, s.address,
       s.topic0, s.topic1, s.topic2, s.topic3, s.data
FROM {STAGING_TABLE} s JOIN unnest($2::bigint[], $3::timestamptz[]) AS t(number, time)
  ON t.number = s.block_number
ORDER BY s.block_number, s.log_index
ON CONFLICT {EVENTS_CONFLICT_TARGET} DO NOTHING"""

_UPSERT_BLOCKS = """
INSERT INTO blocks (chain_id, number, hash, parent_hash, time)
SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[])
ON CONFLICT (chain_id, number) DO UPDATE
    SET hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash, time = EXCLUDED.time"""

_UPSERT_CHECKPOINT = """
INSERT INTO checkpoints (chain_id, block_number, block_hash) VALUES ($1, $2, $3)
ON CONFLICT (chain_id) DO UPDATE
    SET block_number = EXCLUDED.block_number, block_hash = EXCLUDED.block_hash
    -- An unchanged checkpoint (a no-op replay) is not rewritten: no updated_at bump, no NOTIFY.
    WHERE (checkpoints.block_number, checkpoints.block_hash)
          IS DISTINCT FROM (EXCLUDED.block_number, EXCLUDED.block_hash)"""


# A whole range after its COPY, in one statement (one round trip): insert the staged logs as
# events, keep the range's headers, prune the headers that fell out of the window, move the
# checkpoint. Data-modifying CTEs always run to completion; the pruned and the upserted block
# numbers are disjoint. $1 chain, $2/$3 block numbers and times of every header (for the
# events), $4..$7 the headers kept, $8 prune up to, $9/$10 the checkpoint. Returns the number
# of events inserted.
_STORE_RANGE = f"""
WITH new_events AS ({_INSERT_EVENTS}
     RETURNING 1),
kept AS (
    INSERT INTO blocks (chain_id, number, hash, parent_hash, time)
    SELECT $1, * FROM unnest($4::bigint[], $5::text[], $6::text[], $7::timestamptz[])
    ON CONFLICT (chain_id, number) DO UPDATE
        SET hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash, time = EXCLUDED.time),
pruned AS (DELETE FROM blocks WHERE chain_id = $1 AND number <= $8),
moved AS (
    INSERT INTO checkpoints (chain_id, block_number, block_hash) VALUES ($1, $9, $10)
    ON CONFLICT (chain_id) DO UPDATE
        SET block_number = EXCLUDED.block_number, block_hash = EXCLUDED.block_hash
        WHERE (checkpoints.block_number, checkpoints.block_hash)
              IS DISTINCT FROM (EXCLUDED.block_number, EXCLUDED.block_hash))
SELECT count(*) FROM new_events"""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last block fully ingested for a chain."""

    number: int
    hash: str


@dataclass(frozen=True, slots=True)
class StoredBlock:
    number: int
    hash: str
    time: datetime


def block_time(header: Header) -> datetime:
    """``events.block_time`` / ``blocks.time``: the header timestamp, UTC."""
    return datetime.fromtimestamp(header.timestamp, UTC)


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Create this session's staging table (temporary; emptied at every commit)."""
    await conn.execute(_CREATE_STAGING)


async def try_writer_lock(conn: asyncpg.Connection, chain_id: int) -> bool:
    """Take the chain's single-writer advisory lock for this session, without waiting."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", writer_lock_key(chain_id)))


async def writer_lock_holder(conn: asyncpg.Connection, chain_id: int) -> int | None:
    """The backend pid holding the chain's writer lock, if any (for operator messages)."""
    key = writer_lock_key(chain_id) & 0xFFFFFFFFFFFFFFFF
    return await conn.fetchval(
        """SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        key >> 32, key & 0xFFFFFFFF)


async def load_checkpoint(conn: asyncpg.Connection, chain_id: int) -> Checkpoint | None:
    row = await conn.fetchrow(
        "SELECT block_number, block_hash FROM checkpoints WHERE chain_id = $1", chain_id)
    return Checkpoint(row["block_number"], row["block_hash"]) if row else None


async def recent_blocks(conn: asyncpg.Connection, chain_id: int, *, since: int) -> list[StoredBlock]:
    """Stored canonical headers with ``number >= since``, highest first."""
    rows = await conn.fetch(
        """SELECT number, hash, time FROM blocks WHERE chain_id = $1 AND number >= $2
           ORDER BY number DESC""", chain_id, since)
    return [StoredBlock(r["number"], r["hash"], r["time"]) for r in rows]


async def insert_events(conn: asyncpg.Connection, *, chain_id: int, headers: Sequence[Header],
                        logs: Sequence[Log]) -> int:
    """COPY ``logs`` to staging and insert those not stored yet as ``chain_id``'s events, with
    the ``block_time`` of their header (every log's block must be among ``headers``); returns
    rows inserted. At most once per transaction: the staging table empties at commit (``ON
    COMMIT DELETE ROWS``), which is cheaper than a TRUNCATE per range."""
    if not logs:
        return 0
    await conn.copy_records_to_table(STAGING_TABLE, records=logs, columns=LOG_COLUMNS)
    status = await conn.execute(_INSERT_EVENTS, chain_id, [h.number for h in headers],
                                [block_time(h) for h in headers])
    return int(status.rsplit(" ", 1)[1])


async def upsert_blocks(conn: asyncpg.Connection, chain_id: int, headers: Sequence[Header]) -> None:
    if headers:
        await conn.execute(_UPSERT_BLOCKS, chain_id, [h.number for h in headers],
                           [h.hash for h in headers], [h.parent_hash for h in headers],
                           [block_time(h) for h in headers])


async def save_checkpoint(conn: asyncpg.Connection, chain_id: int, checkpoint: Checkpoint) -> None:
    await conn.execute(_UPSERT_CHECKPOINT, chain_id, checkpoint.number, checkpoint.hash)


async def store_range(conn: asyncpg.Connection, *, chain_id: int, headers: Sequence[Header],
                      logs: Sequence[Log], keep_blocks: int) -> int:
    """Store one verified, contiguous range and move the checkpoint to its last header, in the
    caller's transaction. Only the last ``keep_blocks`` headers are kept in ``blocks`` (what the
    reorg detector re-checks); older ones are pruned. Returns events inserted."""
    if logs:
        await conn.copy_records_to_table(STAGING_TABLE, records=logs, columns=LOG_COLUMNS)
    last = headers[-1]
    kept = headers[-keep_blocks:]
    times = [block_time(h) for h in headers]
    inserted: int = await conn.fetchval(
        _STORE_RANGE, chain_id, [h.number for h in headers], times, [h.number for h in kept],
        [h.hash for h in kept], [h.parent_hash for h in kept], times[-len(kept):],
        last.number - keep_blocks, last.number, last.hash)
    return inserted


_SAVE_ENDPOINTS = """
INSERT INTO rpc_endpoints (chain_id, position, endpoint, state, head, lag_blocks, health_score,
                           latency_ms, requests, errors, last_error, updated_at)
SELECT $1, * , now() FROM unnest($2::int[], $3::text[], $4::text[], $5::bigint[], $6::int[],
                                 $7::float8[], $8::float8[], $9::bigint[], $10::bigint[], $11::text[])
ON CONFLICT (chain_id, position) DO UPDATE SET
    endpoint = EXCLUDED.endpoint, state = EXCLUDED.state, head = EXCLUDED.head,
    lag_blocks = EXCLUDED.lag_blocks, health_score = EXCLUDED.health_score,
    latency_ms = EXCLUDED.latency_ms, requests = EXCLUDED.requests, errors = EXCLUDED.errors,
    last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at"""


async def save_endpoint_statuses(conn: asyncpg.Connection, chain_id: int,
                                 statuses: Sequence[EndpointStatus]) -> None:
    """Replace the chain's ``rpc_endpoints`` rows with ``statuses`` (rows of endpoints no longer
    configured are deleted). Endpoints are redacted URLs already."""
    await conn.execute("DELETE FROM rpc_endpoints WHERE chain_id = $1 AND position >= $2",
                       chain_id, len(statuses))
    columns = list(zip(*((s.position, s.endpoint, s.state, s.head, s.lag_blocks, s.health_score,
                          s.latency_ms, s.requests, s.errors, s.last_error) for s in statuses),
                       strict=True))
    if columns:
        await conn.execute(_SAVE_ENDPOINTS, chain_id, *map(list, columns))

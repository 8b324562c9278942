"""Rows for retention tests, written with SQL on an asyncpg connection: events at chosen blocks
and block times (one INSERT statement = one event batch, as ingest writes them), checkpoints,
triggers/actions and deliveries."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

CHAIN = 1


async def insert_events(conn: asyncpg.Connection, *, blocks: range, at: datetime,
                        per_block: int = 1, block_seconds: float = 12.0, chain_id: int = CHAIN,
                        invalidated: bool = False, processed: bool = True) -> list[int]:
    """``per_block`` events in each block of ``blocks``, the first block at ``at`` and each next
    one ``block_seconds`` later, in one statement; its batch is marked processed unless
    ``processed`` is False. Returns the event ids in block order."""
    rows = await conn.fetch(
        """INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index,
                               log_index, address, topic0, data, invalidated)
           SELECT $1, b, '0x' || lpad(to_hex(b), 64, '0'),
                  $4::timestamptz + make_interval(secs => (b - $2) * $6::float8),
                  '0x' || lpad(to_hex(b), 64, 'f'), 0, n, '0x' || repeat('11', 20), '0xcc', '0x', $7
           FROM generate_series($2::bigint, $3::bigint) AS b, generate_series(0, $5 - 1) AS n
           ORDER BY b, n
           RETURNING id""",
        chain_id, blocks.start, blocks.stop - 1, at, per_block, block_seconds, invalidated)
    if processed:
        await conn.execute("UPDATE event_batches SET processed_at = now() WHERE processed_at IS NULL")
    return sorted(row["id"] for row in rows)


async def set_checkpoint(conn: asyncpg.Connection, block: int, *, chain_id: int = CHAIN) -> None:
    await conn.execute(
        """INSERT INTO checkpoints (chain_id, block_number, block_hash) VALUES ($1, $2, '0x')
           ON CONFLICT (chain_id) DO UPDATE SET block_number = EXCLUDED.block_number""",
        chain_id, block)


async def action(conn: asyncpg.Connection, *, chain_id: int = CHAIN, name: str = "t") -> tuple[int, int]:
    """A trigger and its webhook action: (trigger id, action id)."""
    trigger_id = await conn.fetchval(
        """INSERT INTO triggers (name, chain_id, event_signature)
           VALUES ($1, $2, 'Transfer(address indexed from, address indexed to, uint256 value)')
           RETURNING id""", name, chain_id)
    action_id = await conn.fetchval(
        """INSERT INTO actions (trigger_id, config) VALUES ($1, '{"url": "https://example.com"}')
           RETURNING id""", trigger_id)
    return trigger_id, action_id


async def delivery(conn: asyncpg.Connection, ids: tuple[int, int], event_id: int, *,
                   status: str, kind: str = "matched", created: datetime) -> int:
    trigger_id, action_id = ids
    delivery_id: int = await conn.fetchval(
        """INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status, created_at)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        action_id, trigger_id, event_id, kind, status, created)
    return delivery_id


async def event_ids(conn: asyncpg.Connection) -> set[int]:
    return {row["id"] for row in await conn.fetch("SELECT id FROM events")}


def days(n: float) -> timedelta:
    return timedelta(days=n)

"""Helpers for processor tests: events, triggers and checkpoints written with SQL, the service
run in-process or as ``python -m processor`` subprocesses, and bounded waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from eth_abi import encode

from core.abi import parse_event_signature
from core.db import connect

ROOT = Path(__file__).resolve().parents[2]
CHAIN_ID = 31337
TOKEN = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
TRANSFER_TOPIC = parse_event_signature(TRANSFER).topic0
SECRET = "whsec_4wJzMj6MK/kEVNjR9l7+XaSP46jWRpjW"
GENESIS = datetime(2026, 1, 1, tzinfo=UTC)


def address_topic(address: str) -> str:
    return "0x" + "0" * 24 + address.lower()[2:]


def wallet(n: int) -> str:
    return "0x" + f"{n:040x}"


@dataclass
class Log:
    block_number: int
    log_index: int
    address: str = TOKEN
    topics: tuple[str | None, ...] = ()
    data: str = "0x"
    block_hash: str | None = None
    block_time: datetime | None = None

    def row(self, chain_id: int) -> tuple[Any, ...]:
        topics = [*self.topics, None, None, None, None][:4]
        block_hash = self.block_hash or "0x" + f"{self.block_number:064x}"
        block_time = self.block_time or GENESIS + timedelta(seconds=12 * self.block_number)
        return (chain_id, self.block_number, block_hash, block_time,
                "0x" + f"{self.block_number:032x}{self.log_index:032x}", 0, self.log_index,
                self.address.lower(), *topics, self.data)


def transfer(block_number: int, log_index: int, value: int, *, sender: str = wallet(1),
             receiver: str = wallet(2), token: str = TOKEN, **kwargs: Any) -> Log:
    return Log(block_number, log_index, token,
               (TRANSFER_TOPIC, address_topic(sender), address_topic(receiver)),
               "0x" + encode(["uint256"], [value]).hex(), **kwargs)


_INSERT = """
INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index,
                    address, topic0, topic1, topic2, topic3, data)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[],
                     $6::int[], $7::int[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::text[])
ON CONFLICT (chain_id, block_hash, log_index, block_time) WHERE NOT invalidated DO NOTHING
"""


async def insert_events(conn: asyncpg.Connection, logs: Sequence[Log], *,
                        chain_id: int = CHAIN_ID) -> None:
    """One INSERT statement (so one event batch), as the indexer writes them."""
    columns = list(zip(*(log.row(chain_id) for log in logs), strict=True))
    await conn.execute(_INSERT, *[list(column) for column in columns])


async def add_trigger(conn: asyncpg.Connection, name: str, *, signature: str = TRANSFER,
                      address: str | None = TOKEN, conditions: Any = None,
                      confirmations: int = 0, chain_id: int = CHAIN_ID,
                      configs: Iterable[dict[str, Any]] | None = None) -> tuple[int, list[int]]:
    trigger_id = await conn.fetchval(
        """INSERT INTO triggers (name, chain_id, address, event_signature, conditions,
                                 confirmations) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        name, chain_id, address, signature, conditions, confirmations)
    action_ids = []
    for config in configs if configs is not None else [{"url": "https://example.com/hook",
                                                          "secret": SECRET}]:
        action_ids.append(await conn.fetchval(
            "INSERT INTO actions (trigger_id, type, config) VALUES ($1, 'webhook', $2) RETURNING id",
            trigger_id, config))
    return trigger_id, action_ids


async def set_checkpoint(conn: asyncpg.Connection, block_number: int, *,
                         chain_id: int = CHAIN_ID) -> None:
    await conn.execute(
        """INSERT INTO checkpoints (chain_id, block_number, block_hash) VALUES ($1, $2, $3)
           ON CONFLICT (chain_id) DO UPDATE SET block_number = excluded.block_number,
                                                block_hash = excluded.block_hash""",
        chain_id, block_number, "0x" + f"{block_number:064x}")


async def reorg(conn: asyncpg.Connection, *, common_ancestor: int, chain_id: int = CHAIN_ID) -> int:
    """Invalidate events above ``common_ancestor`` and record the reorg, as the indexer does."""
    async with conn.transaction():
        count = await conn.fetchval(
            """WITH changed AS (UPDATE events SET invalidated = true, invalidated_at = now()
                                WHERE chain_id = $1 AND block_number > $2 AND NOT invalidated
                                RETURNING 1) SELECT count(*) FROM changed""",
            chain_id, common_ancestor)
        await conn.execute(
            """INSERT INTO reorgs (chain_id, depth, common_ancestor, old_head_hash, new_head_hash,
                                   events_invalidated) VALUES ($1, 1, $2, '0xold', '0xnew', $3)""",
            chain_id, common_ancestor, count)
    return int(count)


async def db(url: str) -> asyncpg.Connection:
    return await connect(url)


async def wait_for(check: Callable[[], Awaitable[bool]], *, within: float, what: str,
                   interval: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


async def delivery_statuses(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


class ProcessorProcess:
    """``python -m processor`` as a real subprocess, output kept in a log file."""

    def __init__(self, *, database_url: str, redis_url: str, log_path: Path,
                 **env: str) -> None:
        self.log_path = log_path
        self.env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    "LOG_FORMAT": "json", "METRICS_PORT": "0", **env}
        with log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "processor"], cwd=ROOT,
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"processor did not stop on SIGTERM:\n{self.output()}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

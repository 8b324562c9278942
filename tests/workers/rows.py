"""Insert triggers, actions, events and deliveries directly with SQL, and read deliveries back."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.queue import enqueue_deliveries

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
TRANSFER_TOPIC0 = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def insert_trigger(conn: psycopg.Connection[Any], *, name: str = "t", signature: str = TRANSFER,
                   chain_id: int = 31337, address: str | None = None) -> int:
    row = conn.execute(
        "INSERT INTO triggers (name, chain_id, address, event_signature) VALUES (%s, %s, %s, %s) "
        "RETURNING id", (name, chain_id, address, signature)).fetchone()
    assert row is not None
    return int(row["id"])


def insert_action(conn: psycopg.Connection[Any], trigger_id: int, config: dict[str, Any]) -> int:
    row = conn.execute("INSERT INTO actions (trigger_id, type, config) VALUES (%s, 'webhook', %s) "
                       "RETURNING id", (trigger_id, Jsonb(config))).fetchone()
    assert row is not None
    return int(row["id"])


def insert_event(conn: psycopg.Connection[Any], *, topics: list[str | None], data: str,
                 address: str = "0x5fbdb2315678afecb367f032d93f642f64180aa3",
                 chain_id: int = 31337, block_number: int = 12, log_index: int = 3,
                 block_hash: str | None = None, tx_hash: str = "0x" + "ab" * 32, tx_index: int = 0,
                 block_time: datetime | None = None, invalidated: bool = False) -> int:
    topics = [*topics, None, None, None, None][:4]
    row = conn.execute(
        """INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index,
                               log_index, address, topic0, topic1, topic2, topic3, data, invalidated)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (chain_id, block_number, block_hash or "0x" + f"{block_number:064x}",
         block_time or datetime(2026, 11, 22, 12, 0, tzinfo=UTC), tx_hash, tx_index, log_index,
         address, *topics, data, invalidated)).fetchone()
    assert row is not None
    return int(row["id"])


def transfer_event(conn: psycopg.Connection[Any], *, value: int = 10**21, log_index: int = 3,
                   invalidated: bool = False) -> int:
    sender = "0x" + "00" * 12 + "11" * 20
    receiver = "0x" + "00" * 12 + "22" * 20
    return insert_event(conn, topics=[TRANSFER_TOPIC0, sender, receiver],
                        data="0x" + f"{value:064x}", log_index=log_index, invalidated=invalidated)


def insert_delivery(conn: psycopg.Connection[Any], *, action_id: int, trigger_id: int,
                    event_id: int, kind: str = "matched", status: str = "queued",
                    replay: bool = False) -> int:
    row = conn.execute(
        """INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status, replay, queued_at)
           VALUES (%s, %s, %s, %s, %s, %s, now()) RETURNING id""",
        (action_id, trigger_id, event_id, kind, status, replay)).fetchone()
    assert row is not None
    return int(row["id"])


def webhook_setup(url: str, *, hook_url: str, secret: str | None = None, count: int = 1,
                  extra_config: dict[str, Any] | None = None, name: str = "t") -> list[int]:
    """A Transfer trigger, a webhook action to ``hook_url`` and ``count`` queued deliveries
    (one Transfer event each). Returns the delivery ids."""
    config: dict[str, Any] = {"url": hook_url, **(extra_config or {})}
    if secret:
        config["secret"] = secret
    with connect(url) as conn:
        trigger_id = insert_trigger(conn, name=name)
        action_id = insert_action(conn, trigger_id, config)
        return [insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                event_id=transfer_event(conn, log_index=i))
                for i in range(count)]


def delivery(url: str, delivery_id: int) -> dict[str, Any]:
    with connect(url) as conn:
        row = conn.execute("SELECT * FROM deliveries WHERE id = %s", (delivery_id,)).fetchone()
    assert row is not None
    return row


def deliveries(url: str) -> list[dict[str, Any]]:
    with connect(url) as conn:
        return conn.execute("SELECT * FROM deliveries ORDER BY id").fetchall()


def enqueue(redis_client: Any, ids: list[int]) -> None:
    enqueue_deliveries(redis_client, ids)

"""A factory trigger over 10,000 children (part of ``bench.py processor``, issue 20).

Data: a factory's 10,000 ``PairCreated`` logs (20 statements of 500 rows), then 100,000 Uniswap
V2 ``Swap`` events emitted by those children (100 statements of 1,000 rows: 100 event batches),
each from a child drawn at random; ``amount0In`` uniform in [0, 1,000,000). The same events are
processed in-process (``Processor.drain``, as the throughput figure) under three one-trigger
sets, swapped between runs, best of ``RUNS``:

- **factory**: ``Swap`` on every child of the factory with ``amount0In >= 900,000`` (10 % match):
  each page of a claim reads its emitters' children (one query), each event one dict lookup;
- **single address**: the same event and condition on one child: the baseline of the same run;
- **any address**: the same on every emitter (``address`` NULL): the same matches as the
  factory trigger without the child lookup, printed beside it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from core.abi import parse_event_signature
from scripts.benchmarks.report import Figure

CHAIN_ID = 1
CHILDREN = 10_000
CREATION_ROWS = 500
EVENTS = 100_000
STATEMENT_ROWS = 1_000
MAX_AMOUNT = 1_000_000
THRESHOLD = 900_000
RUNS = 2
FACTORY = "0x5c69bee701ef814a2b6a3edd4b1652cb9cc5aa6f"
PAIR_CREATED = "PairCreated(address indexed token0, address indexed token1, address pair, uint)"
SWAP = ("Swap(address indexed sender, uint amount0In, uint amount1In, uint amount0Out, "
        "uint amount1Out, address indexed to)")
CHILD_ADDRESSES = ["0x" + "fa" + f"{n:038x}" for n in range(CHILDREN)]
CONDITIONS = {"all": [{"field": "amount0In", "op": "gte", "value": str(THRESHOLD)}]}

_INSERT = """
INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index,
                    address, topic0, topic1, topic2, data)
SELECT $1, u.block_number, '0x' || lpad(to_hex(u.block_number), 64, '0'), u.block_time,
       u.tx_hash, 0, u.log_index, u.address, $2, u.topic1, u.topic2, u.data
FROM unnest($3::bigint[], $4::timestamptz[], $5::text[], $6::int[], $7::text[], $8::text[],
            $9::text[], $10::text[])
     AS u(block_number, block_time, tx_hash, log_index, address, topic1, topic2, data)
"""

_TRIGGER = """
WITH t AS (
  INSERT INTO triggers (name, chain_id, address, event_signature, conditions, factory_address,
                        factory_event_signature, factory_parameter)
  VALUES ('bench-factory', $1, $2, $3, $4::jsonb, $5, $6, $7) RETURNING id)
INSERT INTO actions (trigger_id, config) SELECT id, '{"url": "https://example.com/hook"}' FROM t
"""

Run = Callable[[str, str], Awaitable[tuple[float, int, int]]]


def _word(value: int) -> str:
    return f"{value:064x}"


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


async def prepare(url: str) -> None:
    """Replace the database's events and triggers with the factory family (runs last)."""
    rng = random.Random(20)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE events, event_batches, deliveries, deferred_matches, "
                           "triggers, factories RESTART IDENTITY CASCADE")
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        created_topic = parse_event_signature(PAIR_CREATED).topic0
        for statement in range(CHILDREN // CREATION_ROWS):
            columns: list[list[Any]] = [[] for _ in range(8)]
            for i in range(CREATION_ROWS):
                n = statement * CREATION_ROWS + i
                row = [n // 100, start, "0x" + _word(n), n % 100, FACTORY,
                       _topic("0x" + _word(2 * n)[24:]), _topic("0x" + _word(2 * n + 1)[24:]),
                       "0x" + "0" * 24 + CHILD_ADDRESSES[n][2:] + _word(n)]
                for column, item in zip(columns, row, strict=True):
                    column.append(item)
            await conn.execute(_INSERT, CHAIN_ID, created_topic, *columns)
        swap_topic = parse_event_signature(SWAP).topic0
        for statement in range(EVENTS // STATEMENT_ROWS):
            columns = [[] for _ in range(8)]
            for i in range(STATEMENT_ROWS):
                n = statement * STATEMENT_ROWS + i
                block = 1_000 + n // 10
                amount = rng.randrange(MAX_AMOUNT)
                row = [block, start + timedelta(seconds=2 * block), "0x" + _word(CHILDREN + n),
                       n % 10, rng.choice(CHILD_ADDRESSES), _topic("0x" + "ab" * 20),
                       _topic("0x" + "cd" * 20),
                       "0x" + _word(amount) + _word(0) + _word(0) + _word(amount // 2)]
                for column, item in zip(columns, row, strict=True):
                    column.append(item)
            await conn.execute(_INSERT, CHAIN_ID, swap_topic, *columns)
        await conn.execute("UPDATE event_batches SET processed_at = now() WHERE row_count = $1",
                           CREATION_ROWS)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def set_trigger(url: str, kind: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE triggers CASCADE")
        address = CHILD_ADDRESSES[0] if kind == "single address" else None
        factory = (FACTORY, PAIR_CREATED, "pair") if kind == "factory" else (None, None, None)
        await conn.execute(_TRIGGER, CHAIN_ID, address, SWAP, orjson.dumps(CONDITIONS).decode(),
                           *factory)
    finally:
        await conn.close()


def run_factory(url: str, redis_url: str, *, backend: str, in_process: Run) -> list[Figure]:
    """Prepare, then time the three trigger sets alternately; return the figures."""
    asyncio.run(prepare(url))
    best: dict[str, tuple[float, int, int]] = {}
    for _ in range(RUNS):
        for kind in ("single address", "any address", "factory"):
            asyncio.run(set_trigger(url, kind))
            seconds, events, created = asyncio.run(in_process(url, redis_url))
            if kind not in best or events / seconds > best[kind][1] / best[kind][0]:
                best[kind] = (seconds, events, created)
    rate = {kind: events / seconds for kind, (seconds, events, _) in best.items()}
    factory_deliveries = best["factory"][2]
    note = (f"{backend}; {EVENTS:,} Swap events of {CHILDREN:,} children, "
            f"{factory_deliveries:,} deliveries; the same events under one trigger on any "
            f"address: {rate['any address']:,.0f} ev/s ({best['any address'][2]:,} deliveries); "
            f"best of {RUNS}")
    return [Figure(f"processor factory trigger, {CHILDREN:,} children [{backend}]",
                   rate["factory"], "ev/s", baseline=rate["single address"], note=note)]

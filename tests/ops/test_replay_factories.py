"""``scripts/replay.py --dry-run`` on a factory trigger, with the real Uniswap V2 factory and
pairs: the deliveries the replay's new logs would create count the factory's children — one whose
creation is stored, and one created (and swapped on, in the same block) by logs the replay would
add — whether a processor has registered the factory yet or not; a look-alike pair of another
factory does not count, and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.db import connect
from core.factories import factory_of, register_factories
from tests.ingest.conftest import ROOT, ingest_settings, running_indexer, wait_for_checkpoint
from tests.ops.test_backtest_factories import LARGE, TABLES
from tests.support.anvil import Anvil
from tests.support.uniswap import ETH, PAIR_CREATED, SWAP, UniswapV2

CHAIN = 31337


def _snapshot(db_url: str) -> dict[str, list[Any]]:
    with psycopg.connect(db_url) as conn:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
                for table in TABLES}


def _dry_run(db_url: str, rpc_url: str, head: int, state: Path) -> dict[str, Any]:
    environment = {**os.environ, "DATABASE_URL": db_url, "RPC_URL": rpc_url, "METRICS_PORT": "0",
                   "XDG_STATE_HOME": str(state)}
    environment.pop("CHAIN_ID", None)
    result = subprocess.run(
        [sys.executable, "scripts/replay.py", "--chain-id", str(CHAIN), "--from-block", "0",
         "--to-block", str(head), "--dry-run", "--json"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


async def test_a_dry_run_counts_factory_children_stored_and_found(
        db_url: str, anvil: Anvil, tmp_path: Path) -> None:
    uni, other = UniswapV2(anvil.url), UniswapV2(anvil.url)
    try:
        token0, token1 = uni.tokens()
        early = uni.create_pair(token0, token1)
        uni.add_liquidity(token0, token1, 1_000 * ETH, 1_000 * ETH)
        uni.swap(token0, token1, 150 * ETH)
        same_block = uni.create_and_swap(200 * ETH)
        lookalike = other.create_and_swap(500 * ETH)
        head = uni.head()
    finally:
        uni.close()
        other.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """WITH t AS (INSERT INTO triggers (name, chain_id, event_signature, conditions,
                                                factory_address, factory_event_signature,
                                                factory_parameter)
                          VALUES ('large-swaps', %s, %s, %s, %s, %s, 'pair') RETURNING id)
               INSERT INTO actions (trigger_id, type, config)
               SELECT id, 'webhook', %s FROM t""",
            (CHAIN, SWAP, Jsonb(LARGE), uni.factory.address, PAIR_CREATED,
             Jsonb({"url": "https://example.com/hook"})))
    async with running_indexer(ingest_settings(db_url, anvil.url)):
        await wait_for_checkpoint(db_url, anvil)
    # The replay would add back: the early pair's large swap (its creation stays stored), the
    # whole block creating and swapping on the same-block pair, and the look-alike's swap.
    swap_topic = factory_of(CHAIN, early, SWAP, "to").topic0
    with psycopg.connect(db_url, autocommit=True) as conn:
        [(same_block_number,)] = conn.execute(
            "SELECT block_number FROM events WHERE address = %s", (same_block,)).fetchall()[:1]
        deleted = conn.execute(
            """DELETE FROM events WHERE (topic0 = %s AND address = ANY(%s))
                 OR block_number = %s""",
            (swap_topic, [early, lookalike], same_block_number)).rowcount
    assert deleted > 3
    before = _snapshot(db_url)

    summary = _dry_run(db_url, anvil.url, head, tmp_path)
    assert summary["logs_added"] == deleted
    assert summary["new_log_deliveries"] == {"large-swaps": 2}
    assert _snapshot(db_url) == before, "a dry run registers nothing either"

    # Once a processor has registered the factory: the stored child from factory_children.
    conn = await connect(db_url)
    try:
        await register_factories(conn, [factory_of(CHAIN, uni.factory.address, PAIR_CREATED,
                                                   "pair")])
    finally:
        await conn.close()
    assert _dry_run(db_url, anvil.url, head, tmp_path)["new_log_deliveries"] == \
        {"large-swaps": 2}

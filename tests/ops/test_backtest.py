"""``scripts/backtest.py`` run as a user runs it: a disabled trigger's matches over stored history
agree with the chain and with the processor's evaluation, nothing is written; history the indexer
never stored is read from the node through the completeness proof (a lying load-balanced
provider cannot hide a log); conditions never true and decode failures are reported; bad input is
one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from web3 import Web3
from web3.contract import Contract

from core.db import connect
from processor.evaluate import evaluate_events
from processor.registry import TriggerRegistry, fetch_trigger_rows
from tests.ingest.conftest import (
    ROOT,
    fetch,
    ingest_settings,
    running_indexer,
    wait_for_checkpoint,
)
from tests.ops.test_seed import SEEDS, psql
from tests.support.anvil import Anvil
from tests.support.contracts import deploy_erc20, transact, web3_for
from tests.support.lagging_provider import LaggingProvider

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
THRESHOLD = 1000
AMOUNTS = [5, 1000, 20, 3000, 999, 1500, 7, 2500]
SNAPSHOT_TABLES = ("events", "blocks", "checkpoints", "triggers", "actions", "deliveries",
                   "event_batches", "deferred_matches", "reorgs")


def _token(anvil: Anvil) -> tuple[Web3, Contract]:
    w3 = web3_for(anvil.url)
    token = deploy_erc20(w3)
    for position, amount in enumerate(AMOUNTS):
        transact(w3, token.functions.mint(w3.eth.accounts[1 + position % 3], amount))
    return w3, token


def _add_trigger(db_url: str, name: str, address: str, *, signature: str = TRANSFER,
                 conditions: Any = None, enabled: bool = False, chain_id: int = 31337) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """WITH t AS (INSERT INTO triggers (name, chain_id, address, event_signature,
                                                conditions, enabled)
                          VALUES (%s, %s, %s, %s, %s, %s) RETURNING id)
               INSERT INTO actions (trigger_id, type, config)
               SELECT id, 'webhook', %s FROM t RETURNING trigger_id""",
            (name, chain_id, address, signature, None if conditions is None else Jsonb(conditions),
             enabled, Jsonb({"url": "https://example.com/hook"}))).fetchone()
    assert row is not None
    return int(row[0])


def _snapshot(db_url: str, tables: tuple[str, ...] = SNAPSHOT_TABLES) -> dict[str, list[Any]]:
    with psycopg.connect(db_url) as conn:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
                for table in tables}


def _backtest(db_url: str, rpc_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DATABASE_URL": db_url, "RPC_URL": rpc_url, "METRICS_PORT": "0",
                   **env}
    environment.pop("CHAIN_ID", None)
    return subprocess.run([sys.executable, "scripts/backtest.py", *args], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=120)


def _report(db_url: str, rpc_url: str, *args: str, **env: str) -> dict[str, Any]:
    result = _backtest(db_url, rpc_url, *args, "--json", **env)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def test_a_disabled_trigger_over_stored_history_matches_what_the_processor_would_fire(
        db_url: str, anvil: Anvil) -> None:
    _, token = _token(anvil)
    async with running_indexer(ingest_settings(db_url, anvil.url)):
        await wait_for_checkpoint(db_url, anvil)
    trigger_id = _add_trigger(db_url, "big-mints", token.address,
                              conditions={"field": "value", "op": "gte", "value": str(THRESHOLD)})
    before = _snapshot(db_url)

    report = _report(db_url, anvil.url, "--trigger", "big-mints", "--from-block", "0")
    expected = [amount for amount in AMOUNTS if amount >= THRESHOLD]
    assert report["trigger"]["enabled"] is False
    # Stored from the chain's oldest stored event (the deployment block) to the checkpoint.
    assert report["sources"][-1] == {"source": "stored", "from_block": 1, "to_block": anvil.head()}
    assert report["candidates"] == len(AMOUNTS) and report["matches"] == len(expected)
    assert report["matches_per_1000_blocks"] == round(len(expected) * 1000 / (anvil.head() + 1), 3)
    assert [int(e["args"]["value"]) for e in report["first_matches"]] == expected[:5]
    assert report["decode_failures"] == 0 and report["never_true"] == []

    # The body is the workers' own, for the stored row of the first match.
    body = report["webhook_body"]
    first = report["first_matches"][0]
    [row] = await fetch(db_url, "SELECT * FROM events WHERE block_hash = $1 AND log_index = $2",
                        first["block_hash"], first["log_index"])
    assert body["type"] == "event.matched" and body["trigger"] == {"id": trigger_id,
                                                                   "name": "big-mints"}
    assert body["event"]["tx_hash"] == row["tx_hash"] and body["event"]["address"] == row["address"]
    assert body["event"]["args"]["to"] == first["args"]["to"]

    by_id = _report(db_url, anvil.url, "--trigger", str(trigger_id), "--from-block", "0")
    assert by_id["matches"] == report["matches"]
    table = _backtest(db_url, anvil.url, "--trigger", "big-mints", "--from-block", "0")
    assert table.returncode == 0, table.stderr
    assert "matches per 1,000 blocks" in table.stdout and '"type": "event.matched"' in table.stdout
    assert _snapshot(db_url) == before, "a backtest writes nothing"

    # The processor's evaluation of the same trigger, enabled, agrees (by id, not just count).
    conn = await connect(db_url)  # with the JSON codecs the processor uses
    try:
        await conn.execute("UPDATE triggers SET enabled = true WHERE id = $1", trigger_id)
        registry = TriggerRegistry.build(await fetch_trigger_rows(conn))
        await conn.execute("UPDATE triggers SET enabled = false WHERE id = $1", trigger_id)
        events = await conn.fetch("SELECT * FROM events ORDER BY block_number, log_index")
    finally:
        await conn.close()
    assert [t.id for t in registry.triggers] == [trigger_id], registry.invalid
    evaluation = evaluate_events(events, registry, chain_id=31337, checkpoint=anvil.head())
    assert evaluation.matches == report["matches"]


def _backtest_behind_a_lagging_node(db_url: str, anvil: Anvil) -> dict[str, Any]:
    """``all-mints`` up to the tip, from a node that is simply behind (null headers,
    ``eth_getLogs`` clamped to its head) until the chain moves on: the backtest must wait for
    the proof, not count what it was given."""
    behind = LaggingProvider(anvil.url, lagging_share=1.0, seed=3)
    environment = {**os.environ, "DATABASE_URL": db_url, "RPC_URL": behind.url,
                   "METRICS_PORT": "0", "MAX_BLOCK_RANGE": "2",
                   "INGEST_ADDRESSES": "0x" + "11" * 20}
    environment.pop("CHAIN_ID", None)
    try:
        backtest = subprocess.Popen(
            [sys.executable, "scripts/backtest.py", "--trigger", "all-mints", "--from-block", "0",
             "--to-block", str(anvil.head()), "--json"], cwd=ROOT, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while behind.stats["null_blocks"] + behind.stats["clamped_log_ranges"] == 0:
                assert time.monotonic() < deadline and backtest.poll() is None, \
                    "the backtest must have met the node's missing blocks"
                time.sleep(0.05)
            anvil.mine(5)  # the node catches up with the range's end
            out, err = backtest.communicate(timeout=120)
        finally:
            if backtest.poll() is None:
                backtest.kill()
                backtest.wait()
    finally:
        behind.close()
    assert backtest.returncode == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


async def test_history_not_stored_is_read_from_a_lying_node_completely(plain_db_url: str,
                                                                        anvil: Anvil) -> None:
    """Nothing stored before START_BLOCK: those blocks come from the node, through a provider
    whose lagging backends silently clamp eth_getLogs; the proof refuses every short answer."""
    db_url = plain_db_url
    _, token = _token(anvil)
    split = anvil.head() - 3  # the last mints are stored, the earlier ones are not
    async with running_indexer(ingest_settings(db_url, anvil.url, start_block=split)):
        await wait_for_checkpoint(db_url, anvil)
    _add_trigger(db_url, "all-mints", token.address)
    provider = LaggingProvider(anvil.url, lagging_share=0.5, seed=3)
    try:
        report = _report(db_url, provider.url, "--trigger", "all-mints", "--from-block", "0",
                         MAX_BLOCK_RANGE="2")
        assert report["matches"] == len(AMOUNTS) == report["candidates"]
        assert {s["source"] for s in report["sources"]} == {"node", "stored"}
    finally:
        provider.close()

    # A contract outside INGEST_ADDRESSES: all of it from the node, up to the tip.
    outside = _backtest_behind_a_lagging_node(db_url, anvil)
    assert [s["source"] for s in outside["sources"]] == ["node"]
    assert outside["matches"] == len(AMOUNTS)


async def test_conditions_never_true_and_decode_failures_are_reported(plain_db_url: str,
                                                                      anvil: Anvil) -> None:
    db_url = plain_db_url
    _, token = _token(anvil)
    async with running_indexer(ingest_settings(db_url, anvil.url)):
        await wait_for_checkpoint(db_url, anvil)
    _add_trigger(db_url, "to-dead", token.address, conditions={"all": [
        {"field": "value", "op": "gte", "value": "1000"},
        {"field": "to", "op": "eq", "value": "0x" + "de" * 20}]})
    # `from` and `to` are indexed in ERC20's Transfer: without `indexed` nothing decodes.
    _add_trigger(db_url, "wrong-indexed", token.address,
                 signature="Transfer(address from, address to, uint256 value)",
                 conditions={"field": "value", "op": "gt", "value": 0})

    report = _report(db_url, anvil.url, "--trigger", "to-dead", "--from-block", "0")
    assert report["matches"] == 0 and report["never_true"] == ["conditions.all[1]"]
    assert report["conditions"][0]["true"] == len([a for a in AMOUNTS if a >= 1000])

    wrong = _report(db_url, anvil.url, "--trigger", "wrong-indexed", "--from-block", "0")
    assert wrong["matches"] == 0 and wrong["decode_failures"] == len(AMOUNTS)
    assert wrong["first_decode_failure"]["block_number"] > 0
    table = _backtest(db_url, anvil.url, "--trigger", "wrong-indexed", "--from-block", "0")
    assert "check which parameters are indexed" in table.stdout


def test_bad_trigger_id_or_range_is_one_line_and_non_zero(plain_db_url: str, anvil: Anvil) -> None:
    db_url = plain_db_url
    anvil.mine(3)
    _add_trigger(db_url, "ok", "0x" + "22" * 20)
    _add_trigger(db_url, "broken", "0x" + "22" * 20, signature="Transfer(address indexed")
    cases = {
        ("--trigger", "nope", "--from-block", "0"): "no trigger with name 'nope'",
        ("--trigger", "999999", "--from-block", "0"): "no trigger with id 999999",
        ("--trigger", "broken", "--from-block", "0"): "is invalid",
        ("--trigger", "ok", "--from-block", "0", "--to-block", "1000000"):
            "block 1000000 is above the node's head",
        ("--trigger", "ok", "--from-block", "5", "--to-block", "2"): "--from-block",
        ("--trigger", "ok", "--from-block", "-1"): "--from-block",
    }
    for args, message in cases.items():
        result = _backtest(db_url, anvil.url, *args)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
@pytest.mark.parametrize("seed", SEEDS, ids=[path.stem for path in SEEDS])
def test_the_walkthrough_backtests_each_seed_trigger_disabled(plain_db_url: str, anvil: Anvil,
                                                              seed: Path) -> None:
    """docs/operations.md's walkthrough: load a seed, disable it, backtest it by name over
    stored history of its chain (one stored event of another contract: no match, no node)."""
    db_url = plain_db_url
    assert psql(db_url, "-f", str(seed)).returncode == 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("UPDATE triggers SET enabled = false RETURNING name, chain_id").fetchone()
        assert row is not None
        name, chain_id = row
        conn.execute("INSERT INTO checkpoints (chain_id, block_number, block_hash) "
                     "VALUES (%s, 100, %s)", (chain_id, "0x" + "00" * 32))
        conn.execute("""INSERT INTO events (chain_id, block_number, block_hash, block_time,
                          tx_hash, tx_index, log_index, address, topic0, data)
                        VALUES (%s, 10, %s, now(), %s, 0, 0, %s, %s, '0x')""",
                     (chain_id, "0x" + "01" * 32, "0x" + "02" * 32, "0x" + "33" * 20,
                      "0x" + "44" * 32))
        factory = conn.execute("SELECT factory_address IS NOT NULL FROM triggers").fetchone()
    # A factory trigger's creation logs are looked for from --factory-from-block (default 0,
    # which this chain's node does not have): from the stored history here.
    more = ("--factory-from-block", "10") if factory and factory[0] else ()
    report = _report(db_url, anvil.url, "--trigger", name, "--from-block", "10", *more)
    assert report["trigger"]["enabled"] is False and report["matches"] == 0
    assert report["sources"] == [{"source": "stored", "from_block": 10, "to_block": 100}]
    if more:
        assert report["children"] == {"count": 0, "sources": [
            {"source": "stored", "from_block": 10, "to_block": 100}]}

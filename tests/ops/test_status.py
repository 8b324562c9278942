"""``scripts/status.py --json`` on a prepared database, Redis queue and a real anvil node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from core.queue import ENDPOINT_STATE_KEY, QUEUE_NAME, REPLAY_QUEUE_NAME, enqueue_deliveries
from tests.support.anvil import Anvil

ROOT = Path(__file__).resolve().parents[2]
CHAIN = 31337
OTHER_CHAIN = 10


def _event_rows(block: int, count: int, *, invalidated: bool) -> list[tuple[Any, ...]]:
    return [(CHAIN, block, f"0x{block:064x}", f"0x{block:02x}{n:062x}", n,
             "0x" + "11" * 20, "0x" + "ab" * 32, "0x", invalidated) for n in range(count)]


def _prepare(url: str) -> None:
    """Chain 31337: checkpoint at block 5, 4 valid + 2 invalidated events in three insert
    statements (three batches) of which the first is processed, two reorgs; chain 10: only a
    trigger. Deliveries: 2 delivered, 1 failed, 1 queued in the last hour, 1 delivered 2 h ago."""
    insert = """INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash,
                                    tx_index, log_index, address, topic0, data, invalidated)
                VALUES {}"""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO checkpoints (chain_id, block_number, block_hash) VALUES (%s, 5, %s)",
                     (CHAIN, "0x" + "05" * 32))
        for rows in (_event_rows(1, 2, invalidated=False), _event_rows(2, 2, invalidated=False),
                     _event_rows(3, 2, invalidated=True)):
            # One multi-row statement: the events trigger writes one batch per statement.
            values = ", ".join(["(%s, %s, %s, now(), %s, 0, %s, %s, %s, %s, %s)"] * len(rows))
            conn.execute(insert.format(values), [value for row in rows for value in row])
        batches = conn.execute("SELECT id, row_count FROM event_batches ORDER BY id").fetchall()
        assert [count for _, count in batches] == [2, 2, 2]
        conn.execute("UPDATE event_batches SET processed_at = now() WHERE id = %s", (batches[0][0],))
        conn.execute("UPDATE event_batches SET created_at = now() - interval '90 seconds' WHERE id = %s",
                     (batches[1][0],))
        for depth, ancestor, age in ((1, 2, "2 hours"), (3, 2, "30 seconds")):
            conn.execute(
                """INSERT INTO reorgs (chain_id, detected_at, depth, common_ancestor, old_head_hash,
                                       new_head_hash, events_invalidated)
                   VALUES (%s, now() - %s::interval, %s, %s, '0xold', '0xnew', 2)""",
                (CHAIN, age, depth, ancestor))
        trigger_id = conn.execute(
            """INSERT INTO triggers (name, chain_id, event_signature) VALUES
               ('ok', %s, 'Transfer(address indexed from, address indexed to, uint256 value)')
               RETURNING id""", (CHAIN,)).fetchone()[0]
        conn.execute("""INSERT INTO triggers (name, chain_id, event_signature, error)
                        VALUES ('broken', %s, 'Transfer(uint257 v)', 'bad type uint257')""",
                     (OTHER_CHAIN,))
        action_id = conn.execute(
            """INSERT INTO actions (trigger_id, config) VALUES (%s, '{"url": "https://example.com"}')
               RETURNING id""", (trigger_id,)).fetchone()[0]
        event_ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id").fetchall()]
        for event_id, status, age in zip(event_ids, ("delivered", "delivered", "failed", "queued",
                                                     "delivered"),
                                         ("1 minute", "2 minutes", "3 minutes", "4 minutes",
                                          "2 hours"), strict=False):
            conn.execute("""INSERT INTO deliveries (action_id, trigger_id, event_id, kind, status,
                                                    created_at)
                            VALUES (%s, %s, %s, 'matched', %s, now() - %s::interval)""",
                         (action_id, trigger_id, event_id, status, age))
        # The queued one is in flight: a worker holds its lease.
        conn.execute("""UPDATE deliveries SET leased_by = 'w:1:aa/1',
                               lease_expires_at = now() + interval '1 minute'
                        WHERE status = 'queued'""")


def _prepare_queue(redis_url: str) -> None:
    """One failed job (a real failure, run by a real RQ worker), then three waiting jobs."""
    redis = Redis.from_url(redis_url)
    try:
        queue = Queue(QUEUE_NAME, connection=redis)
        queue.enqueue("operator.truediv", 1, 0)
        SimpleWorker([queue], connection=redis).work(burst=True)
        assert enqueue_deliveries(redis, list(range(1, 121)), batch_size=50) == 3
        assert enqueue_deliveries(redis, list(range(200, 300)), batch_size=50,
                                  queue_name=REPLAY_QUEUE_NAME) == 2
        # A worker's report of an endpoint paused by its circuit breaker, and a stale one.
        state = {"circuit": "open", "failures": 5, "waiting": 40, "in_flight": 0,
                 "last_error": "timed out after 10 s", "open_for_seconds": 12.0,
                 "probe_interval": 30.0, "worker": "w:1:aa"}
        redis.hset(ENDPOINT_STATE_KEY, mapping={
            "hooks.example:443": json.dumps({**state, "updated": time.time()}),
            "gone.example:443": json.dumps({**state, "updated": time.time() - 3600})})
    finally:
        redis.close()


def _status(url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "scripts/status.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_json_reports_lag_and_counts(db_url: str, redis_url: str, anvil: Anvil,
                                            request: pytest.FixtureRequest) -> None:
    _prepare(db_url)
    _prepare_queue(redis_url)
    anvil.mine(12)
    result = _status(db_url, redis_url, "--json", "--rpc-url", anvil.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    backend = request.node.callspec.params["db_url"]
    assert report["storage_path"] == ("timescaledb" if backend == "timescale" else "plain")
    chains = {c["chain_id"]: c for c in report["chains"]}
    assert set(chains) == {CHAIN, OTHER_CHAIN}
    local = chains[CHAIN]
    assert local["node_head"] == anvil.head() == 12
    assert local["checkpoint"] == 5 and local["lag_blocks"] == 7
    assert (local["events_valid"], local["events_invalidated"]) == (4, 2)
    assert local["last_reorg"]["depth"] == 3 and local["last_reorg"]["age_seconds"] < 120
    assert (local["unprocessed_batches"], local["unprocessed_events"]) == (2, 4)
    assert 90 <= local["oldest_unprocessed_age_seconds"] < 150
    assert local["triggers_enabled"] == 1
    other = chains[OTHER_CHAIN]
    assert other["node_head"] is None and other["checkpoint"] is None and other["lag_blocks"] is None

    assert report["deliveries_last_hour"] == {"pending": 0, "queued": 1, "delivered": 2,
                                              "failed": 1, "cancelled": 0}
    assert report["deliveries_open"] == 1
    assert report["deliveries_in_flight"] == 1
    [circuit] = report["webhook_circuits"]
    assert (circuit["endpoint"], circuit["circuit"], circuit["failures"]) == (
        "hooks.example:443", "open", 5)
    assert report["queue"] == {"name": QUEUE_NAME, "depth": 3, "started": 0, "scheduled": 0,
                               "failed": 1, "workers": 0, "history_depth": 2, "error": None}
    assert [(t["name"], t["error"]) for t in report["invalid_triggers"]] == [
        ("broken", "bad type uint257")]

    table = _status(db_url, redis_url, "--rpc-url", anvil.url)
    assert table.returncode == 0, table.stderr
    assert "bad type uint257" in table.stdout and "depth 3 at #2" in table.stdout
    assert "hooks.example:443" in table.stdout and "1 in flight" in table.stdout


def test_status_survives_unreachable_node_and_redis(plain_db_url: str) -> None:
    result = _status(plain_db_url, "redis://127.0.0.1:1/0", "--json", "--rpc-url",
                     "http://127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queue"]["error"] and report["nodes"][0]["error"]
    assert report["chains"] == []


def test_status_unreachable_database_is_one_line() -> None:
    result = _status("postgresql://postgres@127.0.0.1:1/nowhere", "redis://127.0.0.1:1/0",
                     "--rpc-url", "http://127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot connect to the database" in result.stderr

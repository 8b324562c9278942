"""``scripts/replay.py`` against the real pipeline (guarantee 8): replaying an ingested range
changes nothing; a gap comes back exactly and fires once; ``--refire`` fires a new trigger's
history once and only once; ``--dry-run`` writes nothing and reports what would happen; the
replay runs alongside a live indexer, leaving it its window; Ctrl-C leaves a resumable replay."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from tests.e2e.chain import TOKEN, TRANSFER, ChainLog
from tests.e2e.pipeline import (
    CHAIN_ID,
    Hook,
    assert_all_verified,
    assert_stored_exactly_once,
    wait_deliveries,
    wait_ingested,
    wait_received,
    wait_until,
)
from tests.ops.conftest import ROOT, OpsPipeline

THRESHOLD = 1000 * TOKEN
TABLES = ("events", "blocks", "checkpoints", "reorgs", "triggers", "actions", "deliveries",
          "event_batches", "deferred_matches")


def _ingest_and_deliver(p: OpsPipeline) -> tuple[Hook, list[ChainLog], list[ChainLog], int]:
    """A trigger on large token A transfers, the pipeline running, a few transfers delivered;
    then the indexer is stopped (replay needs the writer lock). Returns the hook, every chain
    log, the matching ones, and the head."""
    chain, store = p.chain, p.store
    hook = store.add_hook("big-transfers", address=chain.token_a.address, signature=TRANSFER,
                          conditions={"field": "value", "op": "gte", "value": str(THRESHOLD)},
                          url=p.receiver.url("hooks/big"))
    p.start()
    alice, bob = chain.accounts[1], chain.accounts[2]
    for amount in (THRESHOLD, 5, 2 * THRESHOLD, 7 * TOKEN, 3 * THRESHOLD):
        chain.wait(chain.mint(chain.token_a, alice, amount))
    chain.wait(chain.transfer(chain.token_a, bob, THRESHOLD, sender=alice))
    head = chain.head()
    logs = chain.logs(0, head)
    matching = [log for log in logs if _is_token_a_transfer(p, log) and log.args["value"] >= THRESHOLD]
    assert len(matching) == 4
    wait_ingested(store, logs, head=head, timeout=60, supervisor=p.services)
    wait_deliveries(store, {(hook.action_id, "matched", log.key) for log in matching},
                    timeout=60, supervisor=p.services)
    wait_received(p.receiver, {f"dlv_{row.id}" for row in store.deliveries()}, timeout=60,
                  supervisor=p.services)
    assert p.services["ingest"].terminate() == 0
    return hook, logs, matching, head


def _is_token_a_transfer(p: OpsPipeline, log: ChainLog) -> bool:
    return log.name == "Transfer" and log.address == p.chain.token_a.address.lower()


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every blockhook table, in a stable order (an unchanged checkpoint is not
    even rewritten: its ``updated_at`` stays)."""
    with psycopg.connect(url) as conn:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
                for table in TABLES}


def _received_ids(p: OpsPipeline) -> set[str]:
    """The distinct ``webhook-id``s that reached the receiver. Distinct: a POST may be repeated
    with the same id (at-least-once, e.g. a worker timing out on a loaded machine); "fires once"
    means one delivery row, one ``webhook-id``."""
    return {r["webhook_id"] for r in p.receiver.received()}


def _settle(p: OpsPipeline, seconds: float = 2.0) -> None:
    """Give a running processor (0.5 s sweep) and worker time to act on anything left over."""
    time.sleep(seconds)
    p.services.assert_running("processor", "workers")


def test_replay_of_an_ingested_range_changes_nothing_and_a_gap_comes_back_once(
        ops_pipeline: OpsPipeline, db_url: str) -> None:
    p = ops_pipeline
    hook, logs, matching, head = _ingest_and_deliver(p)
    before, received_before = _snapshot(db_url), _received_ids(p)

    summary = p.replay_json("--chain-id", str(CHAIN_ID), "--from-block", "0",
                            "--to-block", str(head))
    assert (summary["blocks"], summary["logs_added"], summary["events_invalidated"]) == \
        (head + 1, 0, 0)
    _settle(p)
    assert _snapshot(db_url) == before, "replaying a stored range must change nothing"
    assert _received_ids(p) == received_before, "and fire nothing"

    # A gap: two matching events and one that matches nothing vanish with their deliveries,
    # as if the indexer had never stored them.
    gone = [matching[1], matching[3], next(log for log in logs if log.name == "RoleGranted")]
    ids = p.store.event_ids()
    gone_ids = [ids[log.key] for log in gone]
    p.store.execute("DELETE FROM deliveries WHERE event_id = ANY(%s)", gone_ids)
    p.store.execute("DELETE FROM events WHERE id = ANY(%s)", gone_ids)
    delivered_before = {row.id for row in p.store.deliveries()}

    summary = p.replay_json("--chain-id", str(CHAIN_ID), "--from-block", "0",
                            "--to-block", str(head))
    assert summary["logs_added"] == 3 and summary["events_invalidated"] == 0
    assert_stored_exactly_once(p.store, logs)
    rows = wait_deliveries(p.store, {(hook.action_id, "matched", log.key) for log in matching},
                           timeout=60, supervisor=p.services)
    new_rows = [row for row in rows if row.id not in delivered_before]
    assert sorted(row.event_key for row in new_rows) == sorted(log.key for log in gone[:2])
    received = wait_received(p.receiver, {row.webhook_id for row in new_rows}, timeout=60,
                             supervisor=p.services)
    _settle(p)
    after = _received_ids(p)
    assert after - received_before == {row.webhook_id for row in new_rows}, \
        "exactly the restored matching events fire, once each"
    assert_all_verified(received)


def test_refire_fires_only_the_new_trigger_once_per_past_event(ops_pipeline: OpsPipeline) -> None:
    p = ops_pipeline
    hook, logs, _, head = _ingest_and_deliver(p)
    old_rows = {row.id for row in p.store.deliveries()}
    received_before = _received_ids(p)
    history = [log for log in logs if _is_token_a_transfer(p, log)]
    newcomer = p.store.add_hook("all-token-a-transfers", address=p.chain.token_a.address,
                                signature=TRANSFER, url=p.receiver.url("hooks/all"))
    _settle(p)
    assert {row.id for row in p.store.deliveries()} == old_rows, "a new trigger alone fires nothing"

    summary = p.replay_json("--chain-id", str(CHAIN_ID), "--from-block", "0",
                            "--to-block", str(head), "--refire")
    assert summary["logs_added"] == 0
    assert summary["refire_deliveries"] == {"all-token-a-transfers": len(history)}
    assert summary["refire_enqueued"] is True
    rows = wait_deliveries(p.store, {(newcomer.action_id, "matched", log.key) for log in history},
                           timeout=60, supervisor=p.services)
    new_rows = [row for row in rows if row.id not in old_rows]
    assert {row.trigger_id for row in new_rows} == {newcomer.trigger_id}
    assert Counter(row.event_key for row in new_rows) == Counter(log.key for log in history)
    received = wait_received(p.receiver, {row.webhook_id for row in new_rows}, timeout=60,
                             supervisor=p.services)
    refired = [r for r in received if r["webhook_id"] in {row.webhook_id for row in new_rows}]
    assert all(r["body"]["replay"] is True for r in refired)
    assert all(r["body"]["trigger"]["name"] == "all-token-a-transfers" for r in refired)
    assert_all_verified(received)

    again = p.replay_json("--chain-id", str(CHAIN_ID), "--from-block", "0",
                          "--to-block", str(head), "--refire")
    assert again["refire_deliveries"] == {} and again["logs_added"] == 0
    _settle(p)
    assert len(p.store.deliveries()) == len(old_rows) + len(history)
    assert _received_ids(p) - received_before == {row.webhook_id for row in new_rows}
    assert hook.trigger_id not in {row.trigger_id for row in new_rows}


def test_dry_run_changes_nothing_and_reports_what_would_happen(ops_pipeline: OpsPipeline,
                                                               plain_db_url: str) -> None:
    p = ops_pipeline
    _, logs, matching, head = _ingest_and_deliver(p)
    p.store.add_hook("all-token-a-transfers", address=p.chain.token_a.address,
                     signature=TRANSFER, url=p.receiver.url("hooks/all"))
    gone = [matching[0], next(log for log in logs if _is_token_a_transfer(p, log)
                              and log.args["value"] < THRESHOLD)]
    ids = p.store.event_ids()
    p.store.execute("DELETE FROM deliveries WHERE event_id = ANY(%s)", [ids[log.key] for log in gone])
    p.store.execute("DELETE FROM events WHERE id = ANY(%s)", [ids[log.key] for log in gone])
    _settle(p)
    before, received_before = _snapshot(plain_db_url), _received_ids(p)
    stored_transfers = sum(_is_token_a_transfer(p, log) for log in logs) - len(gone)

    result = p.replay("--chain-id", str(CHAIN_ID), "--from-block", "0", "--to-block", str(head),
                      "--refire", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dry_run"] is True and summary["blocks"] == head + 1
    assert (summary["logs_added"], summary["events_invalidated"]) == (2, 0)
    # The two missing logs: both are token A transfers, one of them large.
    assert summary["new_log_deliveries"] == {"big-transfers": 1, "all-token-a-transfers": 2}
    # Refire looks at stored events: the new trigger's history; the old one is all delivered.
    assert summary["refire_deliveries"] == {"all-token-a-transfers": stored_transfers}
    _settle(p)
    assert _snapshot(plain_db_url) == before
    assert _received_ids(p) == received_before
    assert not p.state_home.exists(), "a dry run saves no resume state either"

    table = p.replay("--chain-id", str(CHAIN_ID), "--from-block", "0", "--to-block", str(head),
                     "--refire", "--dry-run")
    assert table.returncode == 0, table.stderr
    assert "dry run: nothing written" in table.stdout and "all-token-a-transfers" in table.stdout


def test_replay_runs_alongside_the_live_indexer(ops_pipeline: OpsPipeline) -> None:
    """No stop: the replay of a range reaching the head runs while the indexer ingests, replays
    what is settled, and says which blocks it left to the indexer (its window)."""
    p = ops_pipeline
    p.start("ingest")
    p.chain.mine(300)
    head = p.chain.head()
    wait_until(lambda: ((p.store.checkpoint() or -1) >= head, f"checkpoint {p.store.checkpoint()}"),
               timeout=30, what="ingest to catch up", supervisor=p.services)
    replay = subprocess.Popen(
        [sys.executable, "scripts/replay.py", "--chain-id", str(CHAIN_ID), "--from-block", "0",
         "--to-block", str(head)], cwd=ROOT, env=p.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        p.chain.mine(5)  # the chain moves on during the replay
        stdout, stderr = replay.communicate(timeout=60)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    assert replay.returncode == 0, stderr
    assert "writer lock" not in stderr
    assert "left to the live indexer" in stdout and f"..{head:,}" in stdout
    assert "it ingests and re-checks them itself" in stdout
    p.services.assert_running("ingest")
    wait_until(lambda: ((p.store.checkpoint() or -1) >= head + 5, f"checkpoint {p.store.checkpoint()}"),
               timeout=30, what="the indexer to go on", supervisor=p.services)
    summary = p.replay_json("--chain-id", str(CHAIN_ID), "--from-block", "0",
                            "--to-block", str(head))
    assert summary["left_to_indexer"] == summary["settled_through"] + 1
    assert summary["blocks"] == summary["settled_through"] + 1 and summary["logs_added"] == 0


def test_interrupted_replay_resumes_where_it_stopped(ops_pipeline: OpsPipeline) -> None:
    p = ops_pipeline
    p.chain.mine(3000)
    head = p.chain.head()
    args = ["scripts/replay.py", "--chain-id", str(CHAIN_ID), "--from-block", "0",
            "--to-block", str(head)]
    slow = {**p.env, "MAX_BLOCK_RANGE": "5"}  # ~600 ranges: time to interrupt it midway
    replay = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=slow,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_files: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while not state_files and time.monotonic() < deadline and replay.poll() is None:
            time.sleep(0.05)
            state_files = list(p.state_home.glob("blockhook/replay-*.json"))
        replay.send_signal(signal.SIGINT)
        _, stderr = replay.communicate(timeout=60)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    assert replay.returncode == 130, stderr
    assert "stopping after the current range" in stderr
    state = state_files[0].read_text()
    stopped_at = json.loads(state)["ingested_through"]
    assert 0 <= stopped_at < head

    resumed = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, env=p.env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: blocks 0..{stopped_at} were replayed" in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == stopped_at + 1 and summary["blocks"] == head + 1
    assert not state_files[0].exists(), "a completed replay forgets its resume state"


def test_replay_handles_divergent_blocks_as_a_reorg(ops_pipeline: OpsPipeline) -> None:
    """The indexer is down while the chain reorganises; replay finds the stored blocks that are
    no longer canonical, invalidates their events, records the reorg, and the receiver gets one
    ``event.removed`` per webhook already sent for them."""
    p = ops_pipeline
    hook, _, matching, head = _ingest_and_deliver(p)
    orphaned = [log for log in matching if log.block_number > head - 2]
    assert len(orphaned) == 2, "the last two blocks each hold one matching transfer"
    p.chain.reorg(2)  # the last two blocks replaced by empty ones
    assert p.chain.head() == head

    summary = p.replay_json("--chain-id", str(CHAIN_ID), "--from-block", "0",
                            "--to-block", str(head))
    assert summary["events_invalidated"] == 2 and summary["logs_added"] == 0
    assert summary["divergent_blocks"] == [head - 1, head]
    reorgs = p.store.rows("SELECT depth, common_ancestor, events_invalidated FROM reorgs")
    assert reorgs == [{"depth": 2, "common_ancestor": head - 2, "events_invalidated": 2}]
    canonical = p.chain.logs(0, head)
    assert_stored_exactly_once(p.store, canonical)
    assert p.store.checkpoint() == head

    rows = wait_deliveries(p.store, {(hook.action_id, "removed", log.key) for log in orphaned},
                           timeout=60, supervisor=p.services)
    removed = [row for row in rows if row.kind == "removed"]
    received = wait_received(p.receiver, {row.webhook_id for row in removed}, timeout=60,
                             supervisor=p.services)
    bodies = [r["body"] for r in received if r["webhook_id"] in {row.webhook_id for row in removed}]
    assert sorted((b["type"], b["event"]["block_hash"], b["event"]["log_index"]) for b in bodies) \
        == sorted(("event.removed", *log.key) for log in orphaned)


def test_replay_without_a_writable_state_directory_still_completes(ops_pipeline: OpsPipeline,
                                                                    tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    head = ops_pipeline.chain.head()
    result = ops_pipeline.replay("--chain-id", str(CHAIN_ID), "--from-block", "0",
                                 "--to-block", str(head), "--json",
                                 env={"XDG_STATE_HOME": str(blocker)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("cannot save the resume position") == 1
    assert json.loads(result.stdout)["logs_added"] == len(ops_pipeline.chain.logs(0, head))

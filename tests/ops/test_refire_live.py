"""``--refire`` with the whole pipeline live (ingest, processor, workers, all running): a new
trigger's history is delivered exactly once per (action, event) while live transfers keep being
delivered — to the new trigger as well, never twice — and the indexer is never stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import defaultdict

from tests.e2e.chain import TOKEN, TRANSFER, ChainLog
from tests.e2e.pipeline import (
    CHAIN_ID,
    assert_all_verified,
    assert_stored_exactly_once,
    wait_deliveries,
    wait_ingested,
    wait_received,
)
from tests.ops.conftest import ROOT, OpsPipeline

THRESHOLD = 1000 * TOKEN


def _token_a_transfers(p: OpsPipeline, logs: list[ChainLog]) -> list[ChainLog]:
    return [log for log in logs
            if log.name == "Transfer" and log.address == p.chain.token_a.address.lower()]


def test_refire_with_everything_live_delivers_history_once_while_live_webhooks_flow(
        ops_pipeline: OpsPipeline) -> None:
    p = ops_pipeline
    chain, store = p.chain, p.store
    live = store.add_hook("big-transfers", address=chain.token_a.address, signature=TRANSFER,
                          conditions={"field": "value", "op": "gte", "value": str(THRESHOLD)},
                          url=p.receiver.url("hooks/big"))
    p.start()
    alice = chain.accounts[1]
    for n in range(24):
        chain.wait(chain.mint(chain.token_a, alice, THRESHOLD * (n % 3)))
    head = chain.head()
    history_logs = chain.logs(0, head)
    wait_ingested(store, history_logs, head=head, timeout=60, supervisor=p.services)
    # Processed, too: a trigger added while history is still being processed gets it live.
    wait_deliveries(store, {(live.action_id, "matched", log.key)
                            for log in _token_a_transfers(p, history_logs)
                            if log.args["value"] >= THRESHOLD}, timeout=60, supervisor=p.services)

    newcomer = store.add_hook("all-token-a-transfers", address=chain.token_a.address,
                              signature=TRANSFER, url=p.receiver.url("hooks/all"))

    # Live traffic during the refire: a mint every 0.2 s, big and small alternating.
    stop = threading.Event()
    sent_during: list[str] = []

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            sent_during.append(chain.mint(chain.token_a, chain.accounts[2],
                                          THRESHOLD if n % 2 == 0 else 3))
            n += 1
            time.sleep(0.2)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        time.sleep(1)
        refire = subprocess.run(
            [sys.executable, "scripts/replay.py", "--chain-id", str(CHAIN_ID), "--from-block", "0",
             "--to-block", str(head), "--refire", "--json"], cwd=ROOT, env=p.env,
            capture_output=True, text=True, timeout=120)
        time.sleep(1)
    finally:
        stop.set()
        sender.join(30)
    assert refire.returncode == 0, refire.stderr
    summary = json.loads(refire.stdout)
    assert summary["logs_added"] == 0
    assert len(sent_during) >= 5, "live transfers were sent while the refire ran"
    p.services.assert_running("ingest", "processor", "workers")

    final_head = chain.head()
    logs = chain.logs(0, final_head)
    wait_ingested(store, logs, head=final_head, timeout=60, supervisor=p.services)
    assert_stored_exactly_once(store, logs)
    transfers = _token_a_transfers(p, logs)
    big = [log for log in transfers if log.args["value"] >= THRESHOLD]
    wanted = ({(newcomer.action_id, "matched", log.key) for log in transfers}
              | {(live.action_id, "matched", log.key) for log in big})
    rows = wait_deliveries(store, wanted, timeout=90, supervisor=p.services)
    matched = [row for row in rows if row.kind == "matched"]
    assert {(row.action_id, "matched", row.event_key) for row in matched} == wanted
    assert len(matched) == len(wanted), "one delivery per (action, event)"
    received = wait_received(p.receiver, {f"dlv_{row.id}" for row in matched}, timeout=90,
                             supervisor=p.services)
    assert_all_verified(received)

    # The receiver's view: each (trigger, event) reached it under exactly one webhook-id.
    ids_per_pair: dict[tuple[int, str, int], set[str]] = defaultdict(set)
    for record in received:
        body = record["body"]
        ids_per_pair[(body["trigger"]["id"], body["event"]["block_hash"],
                      body["event"]["log_index"])].add(record["webhook_id"])
    assert all(len(ids) == 1 for ids in ids_per_pair.values()), \
        {pair: ids for pair, ids in ids_per_pair.items() if len(ids) > 1}
    history = {log.key for log in transfers if log.block_number <= head}
    refired = {(r["body"]["event"]["block_hash"], r["body"]["event"]["log_index"])
               for r in received if r["body"]["trigger"]["id"] == newcomer.trigger_id
               and r["body"].get("replay")}
    assert refired == history, ("the history came through the refire, marked replay", summary)
    assert summary["refire_deliveries"] == {"all-token-a-transfers": len(history)}
    live_during = {log.key for log in big if log.block_number > head}
    assert live_during, "live matches arrived during and after the refire"

"""Scenario 6 — a reorg of depth 3 after deliveries (guarantees 2, 4 and 5).

Five mints: two deep ones, then three in the last three blocks. Once the instant trigger has
delivered all five, ``anvil_reorg`` replaces the last three blocks with a new branch carrying one
different mint. Then:

- the orphaned events are invalidated, the new one is ingested (a ``reorgs`` row says depth 3);
- every delivered orphaned event gets exactly one ``event.removed`` webhook, nothing else does;
- an action whose endpoint was failing (so its deliveries were still being retried) has those
  deliveries ``cancelled`` and never receives them;
- a ``confirmations = 6`` trigger never fires for the orphaned events, and does fire for the
  surviving ones (including the new branch's event once it is 6 deep).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime

from tests.e2e.chain import TOKEN, TRANSFER
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    CHAIN_ID,
    assert_all_verified,
    assert_no_duplicate_rows,
    assert_stored_exactly_once,
    expected_payload_event,
    wait_deliveries,
    wait_ingested,
    wait_received,
    wait_until,
)

DEPTH = 3
DEEP = 6


def test_reorg_invalidates_corrects_and_respects_confirmations(
        make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str) -> None:
    # Many attempts so the blocked endpoint is still being retried when the reorg lands.
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url,
                             WEBHOOK_RETRY_SCHEDULE="1", WEBHOOK_MAX_ATTEMPTS="200")
    chain, store, receiver = pipeline.chain, pipeline.store, pipeline.receiver
    token = chain.token_a.address
    instant = store.add_hook("instant", address=token, signature=TRANSFER,
                             url=receiver.url("hooks/instant"))
    deep = store.add_hook("deep", address=token, signature=TRANSFER, confirmations=DEEP,
                          url=receiver.url("hooks/deep"))
    # Only the three mints that will be orphaned (values 3..5 tokens) go to the blocked endpoint.
    blocked = store.add_hook("blocked", address=token, signature=TRANSFER,
                             conditions={"all": [
                                 {"field": "value", "op": "gte", "value": str(3 * TOKEN)},
                                 {"field": "value", "op": "lte", "value": str(5 * TOKEN)}]},
                             url=receiver.url("hooks/blocked"))
    receiver.script("hooks/blocked", 503)
    pipeline.start()

    alice = chain.accounts[1]
    for amount in (1, 2):
        chain.wait(chain.mint(chain.token_a, alice, amount))
    chain.mine(DEEP + 2)
    for amount in (3, 4, 5):
        chain.wait(chain.mint(chain.token_a, alice, amount * TOKEN))
    head = chain.head()
    before = [log for log in chain.logs() if log.address == token.lower()]
    orphaned = [log for log in before if log.block_number > head - DEPTH]
    survivors = [log for log in before if log.block_number <= head - DEPTH]
    assert len(orphaned) == 3 and len(survivors) == 2 + 3  # (+ RoleGranted ×3 at deployment)
    orphan_transfers = [log for log in orphaned if log.name == "Transfer"]
    survivor_transfers = [log for log in survivors if log.name == "Transfer"]

    wait_ingested(store, chain.logs(), head=head, timeout=30, supervisor=pipeline.services)
    wait_deliveries(store, {(instant.action_id, "matched", log.key) for log in before
                            if log.name == "Transfer"}, timeout=20, supervisor=pipeline.services)
    wait_deliveries(store, {(deep.action_id, "matched", log.key) for log in survivor_transfers},
                    timeout=20, supervisor=pipeline.services)
    # The blocked endpoint has seen (and refused) every orphan-to-be at least once.
    wait_until(lambda: (len({r["webhook_id"] for r in receiver.received()
                             if r["path"] == "/hooks/blocked"}) == 3, "blocked endpoint not tried yet"),
               timeout=15, what="first attempts at the blocked endpoint", supervisor=pipeline.services)
    # Not yet 6 deep: the deep trigger must not have fired for the last three blocks.
    assert not [r for r in receiver.received() if r["path"] == "/hooks/deep"
                and r["body"]["event"]["block_number"] > head - DEPTH]

    # The new branch: three blocks, the middle one carrying a mint the old branch never had.
    chain.reorg(DEPTH, [(chain.call_tx(chain.token_a, "mint", alice, 9 * TOKEN), 1)])
    assert chain.head() == head
    # Detected within a poll or two of the indexer (POLL_INTERVAL=0.2): 5 s is generous.
    wait_until(lambda: (bool(store.rows("SELECT 1 FROM reorgs")), "no reorgs row"), timeout=5,
               what="the reorg to be detected", supervisor=pipeline.services)
    chain.mine(DEEP + 1)
    new_head = chain.head()
    after = chain.logs()
    (replacement,) = [log for log in after if log.block_number > head - DEPTH
                      and log.name == "Transfer"]
    wait_ingested(store, after, head=new_head, timeout=30, supervisor=pipeline.services)
    assert_stored_exactly_once(store, after)
    invalidated = {(r["block_hash"], r["log_index"]) for r in
                   store.rows("SELECT block_hash, log_index FROM events WHERE invalidated")}
    assert invalidated == {log.key for log in orphaned}

    (reorg,) = store.rows("SELECT * FROM reorgs")
    assert (reorg["chain_id"], reorg["depth"], reorg["common_ancestor"]) == (CHAIN_ID, DEPTH, head - DEPTH)
    assert reorg["events_invalidated"] == len(orphaned)

    wanted = {(instant.action_id, "matched", log.key) for log in
              [*survivor_transfers, *orphan_transfers, replacement]}
    wanted |= {(instant.action_id, "removed", log.key) for log in orphan_transfers}
    wanted |= {(deep.action_id, "matched", log.key) for log in [*survivor_transfers, replacement]}
    rows = wait_deliveries(store, wanted, timeout=30, supervisor=pipeline.services)
    wait_deliveries(store, {(blocked.action_id, "matched", log.key) for log in orphan_transfers},
                    status="cancelled", timeout=15, supervisor=pipeline.services)
    rows = store.deliveries()
    assert_no_duplicate_rows(rows)
    # Exactly one removed delivery per delivered orphaned event, and none for anything else.
    removed = Counter(r.event_key for r in rows if r.kind == "removed")
    assert removed == Counter(log.key for log in orphan_transfers), removed
    deep_orphans = [r for r in rows if r.action_id == deep.action_id
                    and r.event_key in {log.key for log in orphaned}]
    assert all(r.status == "cancelled" for r in deep_orphans), [r.describe() for r in deep_orphans]

    by_id = {r.webhook_id: r for r in rows}
    delivered_ids = {r.webhook_id for r in rows if r.status == "delivered"}
    received = wait_received(receiver, delivered_ids, timeout=10, supervisor=pipeline.services)
    assert_all_verified(received)
    orphan_keys = {log.key for log in orphaned}
    for record in received:
        body = record["body"]
        key = (body["event"]["block_hash"], body["event"]["log_index"])
        if record["path"] == "/hooks/deep":
            assert key not in orphan_keys, f"deep trigger fired for orphaned event {key}"
        if record["path"] == "/hooks/blocked":
            assert record["status"] == 503 and by_id[record["webhook_id"]].status == "cancelled"
        if body["type"] == "event.removed":
            row = by_id[record["webhook_id"]]
            assert row.kind == "removed" and key in orphan_keys
            (log,) = [entry for entry in orphan_transfers if entry.key == key]
            event = dict(body["event"])
            assert datetime.fromisoformat(event.pop("block_time").replace("Z", "+00:00")) == log.block_time
            event.pop("signature")
            assert event == expected_payload_event(log)
    removed_posts = Counter(r["webhook_id"] for r in received
                            if r["body"]["type"] == "event.removed" and r["status"] == 200)
    assert sorted(removed_posts) == sorted(r.webhook_id for r in rows if r.kind == "removed")
    assert set(removed_posts.values()) == {1}, f"event.removed sent more than once: {removed_posts}"

"""Scenario 1 — the happy path, on both storage backends.

Real OpenZeppelin ERC20s and a real Uniswap V2 pair; triggers on Transfer with a value threshold,
on Swap with a condition on ``amount0In`` (a hex threshold), on Sync with no condition. Exactly
the expected webhooks arrive, once each, verified with Standard Webhooks, and every payload equals
what web3 decodes from the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from tests.e2e.chain import SWAP, SYNC, TOKEN, TRANSFER, ChainLog
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    Hook,
    assert_all_verified,
    assert_no_duplicate_rows,
    assert_stored_exactly_once,
    expected_payload_event,
    wait_deliveries,
    wait_ingested,
    wait_received,
    wait_until,
)

CANONICAL = {"Transfer": "Transfer(address,address,uint256)",
             "Swap": "Swap(address,uint256,uint256,uint256,uint256,address)",
             "Sync": "Sync(uint112,uint112)"}


def test_happy_path_exact_webhooks_with_web3_payloads(
        make_pipeline: Callable[..., Pipeline], db_url: str, redis_url: str) -> None:
    pipeline = make_pipeline(database_url=db_url, redis_url=redis_url)
    chain, store, receiver = pipeline.chain, pipeline.store, pipeline.receiver
    threshold, swap_threshold = 1000 * TOKEN, 5 * TOKEN
    hooks = {
        "Transfer": store.add_hook(
            "big-transfers", address=chain.token_a.address, signature=TRANSFER,
            conditions={"all": [{"field": "value", "op": "gte", "value": str(threshold)}]},
            url=receiver.url("hooks/transfers")),
        "Swap": store.add_hook(
            "token0-in-swaps", address=chain.pair.address.lower(), signature=SWAP,
            conditions={"field": "amount0In", "op": "gte", "value": hex(swap_threshold)},
            url=receiver.url("hooks/swaps")),
        "Sync": store.add_hook("pair-syncs", address=chain.pair.address, signature=SYNC,
                               url=receiver.url("hooks/syncs")),
    }
    pipeline.start()

    chain.add_liquidity(5000 * TOKEN, 10_000 * TOKEN)
    alice, bob = chain.accounts[1], chain.accounts[2]
    chain.wait(chain.mint(chain.token_a, alice, threshold - 1))  # one wei short: no webhook
    chain.wait(chain.mint(chain.token_a, alice, threshold))  # exactly the threshold: webhook
    chain.wait(chain.transfer(chain.token_a, bob, threshold + 1, sender=alice))
    for amount, zero_for_one in ((TOKEN, True), (swap_threshold, True), (40 * TOKEN, False),
                                 (12 * TOKEN, True)):
        chain.swap(amount, zero_for_one=zero_for_one)
    head = chain.head()
    logs = chain.logs(0, head)

    def matches(log: ChainLog) -> Hook | None:
        if log.name == "Transfer" and log.address == chain.token_a.address.lower():
            return hooks["Transfer"] if log.args["value"] >= threshold else None
        if log.address == chain.pair.address.lower() and log.name == "Swap":
            return hooks["Swap"] if log.args["amount0In"] >= swap_threshold else None
        if log.address == chain.pair.address.lower() and log.name == "Sync":
            return hooks["Sync"]
        return None

    expected = {log.key: (log, hook) for log in logs if (hook := matches(log))}
    per_trigger = {name: sum(h.name == hook.name for _, h in expected.values())
                   for name, hook in hooks.items()}
    # The stream was built to exercise both sides of every condition.
    assert per_trigger == {"Transfer": 4, "Swap": 2, "Sync": 5}, per_trigger

    wait_ingested(store, logs, head=head, timeout=30, supervisor=pipeline.services)
    assert_stored_exactly_once(store, logs)
    wanted = {(hook.action_id, "matched", key) for key, (_, hook) in expected.items()}
    wait_deliveries(store, wanted, timeout=30, supervisor=pipeline.services)
    wait_until(lambda: (not store.rows("SELECT 1 FROM event_batches WHERE processed_at IS NULL"),
                        "unprocessed event batches remain"),
               timeout=10, what="the processor to finish every batch", supervisor=pipeline.services)
    rows = store.deliveries()
    assert_no_duplicate_rows(rows)
    assert {(r.action_id, r.kind, r.event_key) for r in rows} == wanted, "unexpected deliveries"

    by_id = {r.webhook_id: r for r in rows}
    received = wait_received(receiver, set(by_id), timeout=15, supervisor=pipeline.services)
    assert_all_verified(received)
    assert sorted(r["webhook_id"] for r in received) == sorted(by_id), "each webhook exactly once"
    paths = {"Transfer": "/hooks/transfers", "Swap": "/hooks/swaps", "Sync": "/hooks/syncs"}
    for record in received:
        row = by_id[record["webhook_id"]]
        log, hook = expected[row.event_key]
        body = record["body"]
        assert record["path"] == paths[str(log.name)]
        assert record["content_type"].startswith("application/json")
        assert body["type"] == "event.matched"
        assert body["delivery_id"] == row.id
        assert body["trigger"] == {"id": hook.trigger_id, "name": hook.name}
        event = dict(body["event"])
        block_time = datetime.fromisoformat(event.pop("block_time").replace("Z", "+00:00"))
        assert block_time == log.block_time
        assert event.pop("signature") == CANONICAL[str(log.name)]
        assert event == expected_payload_event(log), f"payload of {record['webhook_id']}"

    # docs/reference.md, Commands: every long-running service exits 0 on SIGTERM.
    assert pipeline.services.stop_all() == {"ingest": 0, "processor": 0, "workers": 0}

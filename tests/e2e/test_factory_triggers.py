"""Issue 20 end to end — "every Uniswap V2 pair's Swap over 100 ETH" as one factory trigger,
the real services as processes, the real Uniswap V2 factory and pairs (npm artifacts) on anvil,
with and without ``INGEST_ADDRESSES``:

- a pair created earlier and swapped on later, large and small;
- a pair created and swapped on in one block;
- a look-alike: a pair of *another* Uniswap V2 factory swapping large — never fires;
- a pair created and swapped on in a block that ``anvil_reorg`` then orphans: its delivered
  swap gets exactly one ``event.removed``.

Exactly those webhooks arrive, signed, once each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from psycopg.types.json import Jsonb

from core.abi import parse_event_signature
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    CHAIN_ID,
    SECRET,
    EventKey,
    assert_all_verified,
    assert_no_duplicate_rows,
    wait_deliveries,
    wait_received,
    wait_until,
)
from tests.support.uniswap import ETH, PAIR_CREATED, SWAP, UniswapV2

SWAP_TOPIC = parse_event_signature(SWAP).topic0
# INGEST_ADDRESSES needs some address: one that emits nothing here (the deployer account).
LISTED = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
LARGE = {"any": [{"field": "amount0In", "op": "gte", "value": str(100 * ETH)},
                 {"field": "amount1In", "op": "gte", "value": str(100 * ETH)}]}


def _swaps(uni: UniswapV2, pair: str) -> list[EventKey]:
    logs = uni.rpc("eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest", "address": pair,
                                   "topics": [SWAP_TOPIC]})
    return [(log["blockHash"].lower(), int(log["logIndex"], 16)) for log in logs]


def _large(uni: UniswapV2, pair: str) -> list[EventKey]:
    logs = uni.rpc("eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest", "address": pair,
                                   "topics": [SWAP_TOPIC]})
    return [(log["blockHash"].lower(), int(log["logIndex"], 16)) for log in logs
            if max(int(log["data"][2:66], 16), int(log["data"][66:130], 16)) >= 100 * ETH]


@pytest.mark.parametrize("filtered", [False, True], ids=["all-logs", "INGEST_ADDRESSES"])
def test_large_swaps_on_every_pair_of_a_factory(make_pipeline: Callable[..., Pipeline],
                                                plain_db_url: str, redis_url: str,
                                                filtered: bool) -> None:
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url,
                             **({"INGEST_ADDRESSES": LISTED} if filtered else {}))
    chain, store, receiver = pipeline.chain, pipeline.store, pipeline.receiver
    uni = UniswapV2(chain.node.url)
    try:
        (row,) = store.rows(
            """WITH t AS (
                 INSERT INTO triggers (name, chain_id, event_signature, conditions,
                                       factory_address, factory_event_signature,
                                       factory_parameter)
                 VALUES ('large-swaps-any-pair', %s, %s, %s, %s, %s, 'pair') RETURNING id)
               INSERT INTO actions (trigger_id, type, config)
               SELECT id, 'webhook', %s FROM t RETURNING id""",
            CHAIN_ID, SWAP, Jsonb(LARGE), uni.factory.address, PAIR_CREATED,
            Jsonb({"url": receiver.url("hooks/any-pair"), "secret": SECRET}))
        action_id = row["id"]
        pipeline.start()
        wait_until(lambda: (bool(store.rows("SELECT 1 FROM factories")), "no factories row"),
                   timeout=15, what="the processor to register the factory",
                   supervisor=pipeline.services)

        token0, token1 = uni.tokens()
        pair_a = uni.create_pair(token0, token1)
        uni.add_liquidity(token0, token1, 1_000 * ETH, 1_000 * ETH)
        uni.swap(token0, token1, 150 * ETH)
        uni.swap(token0, token1, 5 * ETH)  # small
        pair_b = uni.create_and_swap(200 * ETH)
        # A look-alike: the fixture's pair belongs to another factory.
        chain.add_liquidity(1_000 * ETH, 1_000 * ETH)
        chain.swap(300 * ETH, zero_for_one=True)
        assert len(_swaps(uni, pair_a)) == 2 and len(_large(uni, pair_a)) == 1
        live = {(action_id, "matched", key) for pair in (pair_a, pair_b)
                for key in _large(uni, pair)}
        wait_deliveries(store, live, timeout=30, supervisor=pipeline.services)

        pair_c = uni.create_and_swap(400 * ETH)
        orphaned = _large(uni, pair_c)
        wait_deliveries(store, {(action_id, "matched", key) for key in orphaned}, timeout=30,
                        supervisor=pipeline.services)
        uni.rpc("anvil_reorg", 1, [])  # the block creating pair_c is replaced
        wait_until(lambda: (bool(store.rows("SELECT 1 FROM reorgs")), "no reorgs row"),
                   timeout=10, what="the reorg to be detected", supervisor=pipeline.services)
        uni.rpc("evm_mine")
        pair_d = uni.create_and_swap(500 * ETH)  # after the reorg, a new pair fires again
        wanted = live | {(action_id, "matched", key) for key in orphaned + _large(uni, pair_d)}
        wanted |= {(action_id, "removed", key) for key in orphaned}
        rows = wait_deliveries(store, wanted, timeout=30, supervisor=pipeline.services)

        assert_no_duplicate_rows(rows)
        assert Counter((r.action_id, r.kind, r.event_key) for r in rows) == Counter(wanted)
        children = {r["child_address"] for r in
                    store.rows("SELECT child_address FROM factory_children")}
        assert children == {pair_a, pair_b, pair_d}
        received = wait_received(receiver, {r.webhook_id for r in rows}, timeout=10,
                                 supervisor=pipeline.services)
        assert_all_verified(received)
        assert Counter(r["webhook_id"] for r in received if r["status"] < 300) == Counter(
            r.webhook_id for r in rows)
        removed = [r for r in received if r["body"]["type"] == "event.removed"]
        assert [r["body"]["event"]["address"] for r in removed] == [pair_c]
    finally:
        uni.close()


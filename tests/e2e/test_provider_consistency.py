"""Scenario — provider truth (issue 14), on both storage backends.

The indexer reads the chain through ``RPC_URL=<dead endpoint>,<load balancer>``: the first
endpoint refuses connections (failover), the second is a real load balancer over two views of
the devnet, one of them 1–3 blocks behind (``null`` blocks, ``eth_getLogs`` clamped to its head,
"unknown block" by hash), routing every request and every call of a batch on its own
(``tests/support/lagging_provider.py``). The chain grows by a mint every ~0.35 s and never
reorganises. Then:

- the stored logs equal the chain's exactly;
- zero reorgs are recorded and no event is invalidated;
- zero ``event.removed`` webhooks are sent;
- every matched event is delivered;
- the API key in the dead endpoint's URL never reaches a log line.

Finally a real ``anvil_reorg`` through the same endpoints is detected and corrected: exactly
the orphaned transfers invalidated, one ``event.removed`` each, the replacement delivered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.chain import TOKEN, TRANSFER
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    assert_all_verified,
    assert_no_duplicate_rows,
    assert_stored_exactly_once,
    wait_deliveries,
    wait_ingested,
    wait_received,
    wait_until,
)
from tests.support.anvil import Anvil
from tests.support.lagging_provider import LaggingProvider
from tests.support.ports import free_port

API_KEY = "e2eKey0123456789abcdefXYZ"
BLOCKS = 28
EVERY = 0.35
DEPTH = 2


@pytest.fixture
def provider(anvil: Anvil) -> Iterator[LaggingProvider]:
    server = LaggingProvider(anvil.url, seed=1414)
    yield server
    server.close()


def test_lagging_load_balanced_provider_and_a_dead_endpoint(
        make_pipeline: Callable[..., Pipeline], db_url: str, redis_url: str,
        provider: LaggingProvider) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v2/{API_KEY}"
    pipeline = make_pipeline(database_url=db_url, redis_url=redis_url,
                             RPC_URL=f"{dead},{provider.url}")
    chain, store, receiver = pipeline.chain, pipeline.store, pipeline.receiver
    token = chain.token_a.address.lower()
    hook = store.add_hook("every-transfer", address=token, signature=TRANSFER,
                          url=receiver.url("hooks/transfers"))
    pipeline.start()

    alice = chain.accounts[1]
    for n in range(1, BLOCKS + 1):  # one mint per block, a block every ~0.35 s
        chain.wait(chain.mint(chain.token_a, alice, n * TOKEN))
        time.sleep(EVERY)
    head = chain.head()
    logs = chain.logs(0, head)
    transfers = [log for log in logs if log.address == token and log.name == "Transfer"]
    assert len(transfers) == BLOCKS

    wait_ingested(store, logs, head=head, timeout=60, supervisor=pipeline.services)
    assert_stored_exactly_once(store, logs)
    assert not store.rows("SELECT * FROM reorgs"), "a reorg was recorded on a chain without one"
    assert not store.rows("SELECT 1 FROM events WHERE invalidated"), "valid events invalidated"
    matched = {(hook.action_id, "matched", log.key) for log in transfers}
    rows = wait_deliveries(store, matched, timeout=60, supervisor=pipeline.services)
    assert_no_duplicate_rows(rows)
    assert {(r.action_id, r.kind, r.event_key) for r in rows} == matched
    received = wait_received(receiver, {r.webhook_id for r in rows}, timeout=20,
                             supervisor=pipeline.services)
    assert_all_verified(received)
    assert not [r for r in received if r["body"]["type"] == "event.removed"]
    # The provider really lied (and the dead endpoint was really tried), and no key leaked.
    assert provider.stats["null_blocks"] > 0 and provider.stats["clamped_log_ranges"] > 0
    ingest_log = pipeline.service("ingest").log_text()
    assert "/v2/***" in ingest_log and API_KEY not in ingest_log

    # A real reorg through the same endpoints: the last DEPTH blocks replaced, one new mint.
    orphaned = [log for log in transfers if log.block_number > head - DEPTH]
    chain.reorg(DEPTH, [(chain.call_tx(chain.token_a, "mint", alice, 999 * TOKEN), 0)])
    wait_until(lambda: (bool(store.rows("SELECT 1 FROM reorgs")), "no reorgs row"), timeout=15,
               what="the reorg to be detected", supervisor=pipeline.services)
    chain.mine(2)
    after = chain.logs()
    (replacement,) = [log for log in after if log.block_number > head - DEPTH
                      and log.name == "Transfer"]
    wait_ingested(store, after, head=chain.head(), timeout=30, supervisor=pipeline.services)
    assert_stored_exactly_once(store, after)
    (reorg,) = store.rows("SELECT * FROM reorgs")
    assert (reorg["depth"], reorg["common_ancestor"]) == (DEPTH, head - DEPTH)
    invalidated = {(r["block_hash"], r["log_index"])
                   for r in store.rows("SELECT block_hash, log_index FROM events WHERE invalidated")}
    assert invalidated == {log.key for log in orphaned}
    wanted = matched | {(hook.action_id, "matched", replacement.key)} | {
        (hook.action_id, "removed", log.key) for log in orphaned}
    rows = wait_deliveries(store, wanted, timeout=30, supervisor=pipeline.services)
    assert_no_duplicate_rows(rows)
    removed = wait_received(receiver, {r.webhook_id for r in rows if r.kind == "removed"},
                            timeout=20, supervisor=pipeline.services)
    removed_posts = Counter((r["body"]["event"]["block_hash"], r["body"]["event"]["log_index"])
                            for r in removed if r["body"]["type"] == "event.removed"
                            and r["status"] == 200)
    assert removed_posts == Counter(log.key for log in orphaned)

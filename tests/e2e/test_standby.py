"""Scenario 7 — standby and concurrency (guarantees 3 and 9).

Two indexers for the same chain, two processors and two workers. Exactly one indexer holds the
chain's writer lock while the other waits as a standby. Mid-stream the active indexer and one
processor are ``kill -9``-ed: the standby takes over, the surviving processor carries on, and at
the end nothing is lost and nothing is delivered twice — not one duplicated delivery row, not one
``webhook-id`` POSTed twice (no worker died, so there is no excuse for a repeat).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from core.db import writer_lock_key
from tests.e2e.chain import SWAP, SYNC, TOKEN, TRANSFER
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    CHAIN_ID,
    Store,
    assert_all_verified,
    assert_no_duplicate_rows,
    assert_stored_exactly_once,
    wait_deliveries,
    wait_ingested,
    wait_received,
    wait_until,
)


def _writer_lock_holders(store: Store) -> list[int]:
    """Backend pids holding the chain's writer advisory lock (a bigint key is split in two)."""
    key = writer_lock_key(CHAIN_ID) & 0xFFFFFFFFFFFFFFFF
    rows = store.rows(
        """SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1""",
        key >> 32, key & 0xFFFFFFFF)
    return [row["pid"] for row in rows]


def test_standbys_take_over_without_loss_or_double_delivery(
        make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str) -> None:
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url)
    chain, store, receiver = pipeline.chain, pipeline.store, pipeline.receiver
    actions = {
        "Transfer": store.add_hook("transfers", signature=TRANSFER,
                                   url=receiver.url("hooks/transfers")).action_id,
        "Swap": store.add_hook("swaps", address=chain.pair.address, signature=SWAP,
                               url=receiver.url("hooks/swaps")).action_id,
        "Sync": store.add_hook("syncs", address=chain.pair.address, signature=SYNC,
                               url=receiver.url("hooks/syncs")).action_id,
    }
    chain.add_liquidity(20_000 * TOKEN, 20_000 * TOKEN)
    services = pipeline.services
    active = services.add("ingest-a", "ingest")
    wait_ingested(store, chain.logs(), head=chain.head(), timeout=30, supervisor=services)
    first_holders = _writer_lock_holders(store)
    assert len(first_holders) == 1, f"writer lock holders: {first_holders}"
    standby = services.add("ingest-b", "ingest")
    for name in ("processor-a", "processor-b"):
        services.add(name, "processor")
    for name in ("workers-a", "workers-b"):
        services.add(name, "workers")
    wait_until(lambda: ("standby" in standby.log_text().lower(), "ingest-b has not said standby"),
               timeout=20, what="the second indexer to wait as a standby", supervisor=services)
    assert _writer_lock_holders(store) == first_holders

    done = threading.Event()

    def produce() -> None:
        try:
            for n in range(40):
                chain.swap((n % 4 + 1) * TOKEN, zero_for_one=n % 3 != 0)
                time.sleep(0.1)
        finally:
            done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(1.5)
    active.kill()
    services["processor-a"].kill()
    assert done.wait(60)
    producer.join()

    head = chain.head()
    logs = chain.logs(0, head)
    wait_ingested(store, logs, head=head, timeout=30, supervisor=services)
    holders = _writer_lock_holders(store)
    assert len(holders) == 1 and holders != first_holders, f"writer lock holders: {holders}"
    assert_stored_exactly_once(store, logs)
    wanted = {(actions[str(log.name)], "matched", log.key) for log in logs
              if log.name == "Transfer"
              or (log.address == chain.pair.address.lower() and log.name in ("Swap", "Sync"))}
    rows = wait_deliveries(store, wanted, timeout=40, supervisor=services)
    assert_no_duplicate_rows(rows)
    assert {(r.action_id, r.kind, r.event_key) for r in rows} == wanted
    received = wait_received(receiver, {r.webhook_id for r in rows}, timeout=10, supervisor=services)
    assert_all_verified(received)
    posts = Counter(r["webhook_id"] for r in received)
    twice = {webhook_id: n for webhook_id, n in posts.items() if n > 1}
    assert not twice, f"webhook-ids POSTed more than once: {sorted(twice.items())[:10]}"
    assert set(posts) == {r.webhook_id for r in rows}

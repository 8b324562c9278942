"""Scenario 9 — replay and refire with the real command (guarantee 8).

After a stream is delivered, the indexer is stopped (SIGTERM: replay writes under the same
single-writer lock) and ``scripts/replay.py`` re-ingests the whole range: nothing changes and
nothing fires. A new trigger is then added and ``--refire`` evaluates the range again: only the
new trigger's history is delivered (marked ``"replay": true``), the old trigger gets nothing twice,
and a second ``--refire`` fires nothing at all. The indexer then resumes where it was.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.chain import SYNC, TOKEN, TRANSFER
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    CHAIN_ID,
    assert_all_verified,
    assert_no_duplicate_rows,
    assert_stored_exactly_once,
    wait_deliveries,
    wait_ingested,
    wait_received,
    wait_until,
)

REPLAY = ("scripts/replay.py", "--chain-id", str(CHAIN_ID), "--from-block", "0")


def test_replay_changes_nothing_and_refire_fires_only_new_history(
        make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str) -> None:
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url)
    chain, store, receiver, services = (pipeline.chain, pipeline.store, pipeline.receiver,
                                        pipeline.services)
    transfers = store.add_hook("transfers", address=chain.token_a.address, signature=TRANSFER,
                               url=receiver.url("hooks/transfers"))
    pipeline.start()
    chain.add_liquidity(1000 * TOKEN, 1000 * TOKEN)
    for n in range(4):
        chain.swap((n + 1) * TOKEN, zero_for_one=n % 2 == 0)
    head = chain.head()
    logs = chain.logs(0, head)
    wait_ingested(store, logs, head=head, timeout=30, supervisor=services)
    token = chain.token_a.address.lower()
    first = {(transfers.action_id, "matched", log.key) for log in logs
             if log.name == "Transfer" and log.address == token}
    wait_deliveries(store, first, timeout=30, supervisor=services)
    events_before = store.rows("SELECT * FROM events ORDER BY id")
    rows_before = store.deliveries()
    received_before = len(receiver.received())

    assert services["ingest"].terminate() == 0
    replay = services.run("replay", *REPLAY)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert store.rows("SELECT * FROM events ORDER BY id") == events_before, "replay changed events"
    assert store.deliveries() == rows_before, "replay fired deliveries"
    assert not store.rows("SELECT 1 FROM event_batches WHERE processed_at IS NULL")

    syncs = store.add_hook("syncs-history", address=chain.pair.address, signature=SYNC,
                           url=receiver.url("hooks/syncs"))
    refire = services.run("refire", *REPLAY, "--refire")
    assert refire.returncode == 0, refire.stdout + refire.stderr
    history = {(syncs.action_id, "matched", log.key) for log in logs if log.name == "Sync"}
    assert len(history) == 5
    rows = wait_deliveries(store, first | history, timeout=30, supervisor=services)
    assert_no_duplicate_rows(rows)
    assert {(r.action_id, r.kind, r.event_key) for r in rows} == first | history
    new_ids = {r.webhook_id for r in rows if r.action_id == syncs.action_id}
    received = wait_received(receiver, new_ids, timeout=10, supervisor=services)
    assert_all_verified(received)
    refired = received[received_before:]
    assert {r["webhook_id"] for r in refired} == new_ids, "refire re-sent old deliveries"
    assert all(r["body"].get("replay") is True for r in refired), [r["body"] for r in refired]

    settled = store.deliveries()
    again = services.run("refire-again", *REPLAY, "--refire")
    assert again.returncode == 0, again.stdout + again.stderr
    assert store.deliveries() == settled, "a second --refire fired again"

    # The indexer resumes from its checkpoint; new events flow as before.
    services["ingest"].start()
    chain.wait(chain.mint(chain.token_a, chain.accounts[1], TOKEN))
    head = chain.head()
    logs = chain.logs(0, head)
    wait_ingested(store, logs, head=head, timeout=30, supervisor=services)
    assert_stored_exactly_once(store, logs)
    latest = {(transfers.action_id, "matched", log.key) for log in logs
              if log.block_number == head and log.name == "Transfer"}
    wait_deliveries(store, latest, timeout=30, supervisor=services)
    wait_until(lambda: (len(receiver.received()) == received_before + len(new_ids) + len(latest),
                        f"{len(receiver.received())} POSTs received"),
               timeout=10, what="exactly the new webhooks", supervisor=services)

"""Reorg handling in the worker: never send a matched delivery of an invalidated event; after a
success that raced an invalidation, make sure the event.removed correction exists and is sent."""

from __future__ import annotations

import threading

import redis

from tests.support.receiver import Receiver, Step
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil, status_is


def test_queued_matched_delivery_of_invalidated_event_is_cancelled_not_sent(
        db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(db_url)
    [delivery_id] = rows.webhook_setup(db_url, hook_url=receiver.url, secret=secret)
    with rows.connect(db_url) as conn:
        conn.execute("UPDATE events SET invalidated = true, invalidated_at = now()")
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(db_url, delivery_id, "cancelled", "delivered", "failed"))
    row = rows.delivery(db_url, delivery_id)
    assert (row["status"], row["attempts"]) == ("cancelled", 0)
    assert "invalidated" in row["last_error"]
    assert receiver.received() == []
    assert [r["kind"] for r in rows.deliveries(db_url)] == ["matched"]  # nothing to correct


def test_invalidation_during_a_successful_attempt_creates_and_sends_the_removed_delivery(
        db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(db_url)
    receiver.script(Step(status=200, hang=1.5))
    [matched_id] = rows.webhook_setup(db_url, hook_url=receiver.url, secret=secret)

    def invalidate_once_sent() -> None:
        receiver.wait_for(1, timeout=10)
        with rows.connect(db_url) as conn:
            conn.execute("UPDATE events SET invalidated = true, invalidated_at = now()")

    reorg = threading.Thread(target=invalidate_once_sent)
    reorg.start()
    rows.enqueue(redis_client, [matched_id])
    work_until(status_is(db_url, matched_id, "delivered", "failed"))
    reorg.join()
    [matched, removed] = rows.deliveries(db_url)
    assert (matched["id"], matched["status"]) == (matched_id, "delivered")
    assert (removed["kind"], removed["event_id"]) == ("removed", matched["event_id"])
    work_until(status_is(db_url, removed["id"], "delivered", "failed"))
    seen = receiver.received()
    assert [(r.webhook_id, r.type) for r in seen] == [
        (f"dlv_{matched_id}", "event.matched"), (f"dlv_{removed['id']}", "event.removed")]
    assert all(r.verified for r in seen)


def test_delivery_of_disabled_action_is_cancelled(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    with rows.connect(plain_db_url) as conn:
        conn.execute("UPDATE actions SET enabled = false")
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "cancelled", "delivered", "failed"))
    assert rows.delivery(plain_db_url, delivery_id)["last_error"] == \
        "action or trigger disabled before sending"
    assert receiver.received() == []


def test_delivery_whose_event_is_gone_fails_with_the_reason(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    with rows.connect(plain_db_url) as conn:
        event_id = conn.execute("DELETE FROM events RETURNING id").fetchone()["id"]  # type: ignore[index]
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "failed", "delivered"))
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["last_error"]) == ("failed", f"event {event_id} not found")
    assert receiver.received() == []

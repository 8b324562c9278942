"""Leases, not locks, across the network (workers.store): a delivery in flight holds no row lock,
so reorg corrections never wait for it; a database error after the POST does not get the webhook
sent again; an expired lease is taken over with the same ``webhook-id``; a late outcome of a
lease taken over is not recorded."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import redis

from core import db
from core.leases import holder_lock_key_sql
from processor.corrections import Corrections, correct_reorgs
from tests.support.receiver import Receiver, Step
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil, status_is
from workers.store import Outcome, claim_deliveries, record_outcomes


def _invalidate_with_reorg(db_url: str) -> None:
    """What the indexer commits on a reorg below block 12: invalidate, then the reorg row."""
    with rows.connect(db_url) as conn:
        conn.execute("UPDATE events SET invalidated = true, invalidated_at = now()")
        conn.execute(
            """INSERT INTO reorgs (chain_id, detected_at, depth, common_ancestor, old_head_hash,
                                   new_head_hash, events_invalidated)
               VALUES (31337, now(), 1, 11, %s, %s, 1)""", ("0x" + "01" * 32, "0x" + "02" * 32))


def _correct(db_url: str, *, within: float) -> Corrections:
    async def run() -> Corrections:
        conn = await db.connect(db_url)
        try:
            return await asyncio.wait_for(correct_reorgs(conn, recheck=True), within)
        finally:
            await conn.close()

    return asyncio.run(run())


def _claim(db_url: str, delivery_ids: list[int], *, lease: str, seconds: float) -> list[int]:
    async def run() -> list[int]:
        conn = await db.connect(db_url)
        try:
            claimed = await claim_deliveries(conn, delivery_ids, lease=lease, default_timeout=0,
                                             margin=seconds)
            return [row["id"] for row in claimed]
        finally:
            await conn.close()

    return asyncio.run(run())


def _record(db_url: str, outcome: Outcome, *, lease: str) -> list[int]:
    async def run() -> list[int]:
        conn = await db.connect(db_url)
        try:
            return [r.delivery_id for r in await record_outcomes(conn, [outcome], lease=lease)]
        finally:
            await conn.close()

    return asyncio.run(run())


def _correct_once_sent(db_url: str, receiver: Receiver, *, within: float,
                       results: list[tuple[Corrections, float]]) -> threading.Thread:
    """In a thread (RQ's worker wants the main one): once the POST arrived, invalidate the event,
    record a reorg and run the processor's correction; ``results`` gets it and its duration."""

    def run() -> None:
        receiver.wait_for(1, timeout=10)
        _invalidate_with_reorg(db_url)
        started = time.monotonic()
        corrections = _correct(db_url, within=within)
        results.append((corrections, time.monotonic() - started))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_correction_completes_while_the_post_is_in_flight_and_the_delivered_one_gets_one_removed(
        db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(db_url)
    receiver.script(Step(status=200, hang=3.0))
    [matched_id] = rows.webhook_setup(db_url, hook_url=receiver.url, secret=secret)
    rows.enqueue(redis_client, [matched_id])
    results: list[tuple[Corrections, float]] = []
    # The POST hangs for 3 s: the correction must not wait for it.
    correction = _correct_once_sent(db_url, receiver, within=2.0, results=results)
    work_until(status_is(db_url, matched_id, "delivered", "failed"))
    correction.join()
    [(corrections, took)] = results
    assert took < 2.0
    # The attempt was in flight: the correction left it to its lease.
    assert (corrections.reorgs, corrections.cancelled, corrections.removed_ids) == (1, 0, [])
    [matched, removed] = rows.deliveries(db_url)
    assert (matched["status"], matched["leased_by"]) == ("delivered", None)
    assert (removed["kind"], removed["event_id"]) == ("removed", matched["event_id"])
    # Correcting again (the sweep re-checks recent reorgs) adds nothing.
    assert _correct(db_url, within=5.0).removed_ids == []
    work_until(status_is(db_url, removed["id"], "delivered", "failed"))
    assert [r.type for r in receiver.received()] == ["event.matched", "event.removed"]
    assert len(rows.deliveries(db_url)) == 2


def test_correction_during_a_failing_attempt_ends_cancelled_without_removed(
        db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(db_url)
    receiver.script(Step(status=503, hang=2.0))
    [matched_id] = rows.webhook_setup(db_url, hook_url=receiver.url, secret=secret)
    rows.enqueue(redis_client, [matched_id])
    results: list[tuple[Corrections, float]] = []
    correction = _correct_once_sent(db_url, receiver, within=1.5, results=results)
    # The retry's claim finds the event invalidated: cancelled, never sent again.
    work_until(status_is(db_url, matched_id, "cancelled", "delivered"))
    correction.join()
    [(corrections, _)] = results
    assert corrections.cancelled == 0
    [matched] = rows.deliveries(db_url)
    assert (matched["status"], matched["attempts"]) == ("cancelled", 1)
    assert receiver.count() == 1


def test_database_error_after_the_post_does_not_send_the_webhook_again(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    receiver.script(Step(status=200, hang=1.0))
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)

    def drop_connections_during_the_post() -> None:
        receiver.wait_for(1, timeout=10)
        with rows.connect(plain_db_url) as conn:
            conn.execute("""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                            WHERE datname = current_database() AND pid <> pg_backend_pid()""")

    dropper = threading.Thread(target=drop_connections_during_the_post)
    dropper.start()
    rows.enqueue(redis_client, [delivery_id])
    work_until(lambda: True)
    dropper.join()
    # Whatever brings the job back (RQ's retry, the processor's sweep) must not resend it.
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "delivered", "failed"), timeout=20)
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["status"], row["attempts"]) == ("delivered", 1)
    assert receiver.count() == 1


def _hold_worker_lock(db_url: str, worker_id: str) -> psycopg.Connection[Any]:
    """What a live worker process holds for its whole life (core.leases)."""
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(f"SELECT pg_advisory_lock({holder_lock_key_sql('%s::text')})", (worker_id,))
    return conn


def test_leases_of_dead_or_late_workers_are_taken_over_with_the_same_webhook_id(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [live_id, dead_id, late_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url,
                                                     secret=secret, count=3)
    alive = _hold_worker_lock(plain_db_url, "alive:1:aa")
    try:
        # A live worker mid-attempt; a worker that died mid-attempt (its session, and with it
        # its holder lock, is gone) long before its lease ends; a live one whose lease ran out.
        assert _claim(plain_db_url, [live_id], lease="alive:1:aa/1", seconds=60) == [live_id]
        assert _claim(plain_db_url, [dead_id], lease="dead:2:bb/1", seconds=60) == [dead_id]
        assert _claim(plain_db_url, [late_id], lease="alive:1:aa/2", seconds=0.2) == [late_id]
        time.sleep(0.3)
        rows.enqueue(redis_client, [live_id, dead_id, late_id])
        work_until(lambda: all(rows.delivery(plain_db_url, i)["status"] == "delivered"
                               for i in (dead_id, late_id)))
        assert sorted(r.webhook_id or "" for r in receiver.received()) == sorted(
            [f"dlv_{dead_id}", f"dlv_{late_id}"])
        assert all(r.verified for r in receiver.received())
        live = rows.delivery(plain_db_url, live_id)
        assert (live["status"], live["leased_by"], live["attempts"]) == (
            "queued", "alive:1:aa/1", 0)
        dead = rows.delivery(plain_db_url, dead_id)
        assert (dead["leased_by"], dead["lease_expires_at"], dead["attempts"]) == (None, None, 1)
    finally:
        alive.close()


def test_late_outcome_of_a_lease_taken_over_is_not_recorded(plain_db_url: str) -> None:
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url="http://127.0.0.1:9/hook")
    assert _claim(plain_db_url, [delivery_id], lease="a:1:aa/1", seconds=0.1) == [delivery_id]
    time.sleep(0.2)
    assert _claim(plain_db_url, [delivery_id], lease="b:1:bb/1", seconds=60) == [delivery_id]
    retry = Outcome(delivery_id, "queued", True, 503, "HTTP 503", 5.0)
    assert _record(plain_db_url, retry, lease="a:1:aa/1") == []
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["leased_by"], row["attempts"], row["last_error"]) == ("b:1:bb/1", 0, None)
    assert _record(plain_db_url, retry, lease="b:1:bb/1") == [delivery_id]
    row = rows.delivery(plain_db_url, delivery_id)
    assert (row["leased_by"], row["attempts"], row["last_error"]) == (None, 1, "HTTP 503")


def test_lost_attempt_of_an_invalidated_matched_delivery_is_cancelled_with_a_removed_one(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [matched_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    # A worker claimed it, may have sent it, and died; then a reorg took the event back.
    assert _claim(plain_db_url, [matched_id], lease="gone:1:cc/1", seconds=0.2) == [matched_id]
    _invalidate_with_reorg(plain_db_url)
    assert _correct(plain_db_url, within=5.0).cancelled == 0  # leased: left to the lease
    time.sleep(0.3)
    rows.enqueue(redis_client, [matched_id])
    work_until(lambda: len(rows.deliveries(plain_db_url)) == 2
               and rows.deliveries(plain_db_url)[1]["status"] == "delivered")
    [matched, removed] = rows.deliveries(plain_db_url)
    assert (matched["status"], matched["attempts"]) == ("cancelled", 0)
    assert removed["kind"] == "removed"
    assert [r.type for r in receiver.received()] == ["event.removed"]

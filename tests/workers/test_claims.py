"""Rows locked by another transaction (a processor marking them queued, another worker mid-
attempt) are not sent concurrently and not left behind: they are claimed once released."""

from __future__ import annotations

import threading
import time

import psycopg
import redis

from tests.support.receiver import Receiver
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil, status_is


def _hold_lock(db_url: str, delivery_id: int, seconds: float, locked: threading.Event) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT 1 FROM deliveries WHERE id = %s FOR UPDATE", (delivery_id,))
        locked.set()
        time.sleep(seconds)
        conn.commit()


def test_briefly_locked_row_is_reclaimed_within_the_same_job(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(plain_db_url, delivery_id, 0.05, locked))
    holder.start()
    locked.wait(5)
    rows.enqueue(redis_client, [delivery_id])
    work_until(lambda: True)  # one burst: the job alone must deliver it
    holder.join()
    assert rows.delivery(plain_db_url, delivery_id)["status"] == "delivered"
    assert len(receiver.received()) == 1


def test_long_locked_row_is_rechecked_later_and_delivered_once(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(plain_db_url, delivery_id, 1.5, locked))
    holder.start()
    locked.wait(5)
    rows.enqueue(redis_client, [delivery_id])
    work_until(lambda: True)
    assert rows.delivery(plain_db_url, delivery_id)["status"] == "queued"
    assert receiver.received() == []  # never sent while someone else held the row
    work_until(status_is(plain_db_url, delivery_id, "delivered"), timeout=20)
    holder.join()
    assert len(receiver.received()) == 1

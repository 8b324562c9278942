"""Webhook secrets at rest and in rotation: a secret written in a SQL seed is sealed on first
sight and no dump holds it; the encryption key rotates while a worker delivers; an endpoint
secret rotates with both signatures sent until the old one expires, each verified by the
reference ``standardwebhooks`` library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from psycopg.types.json import Jsonb
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.crypto import Keyring, generate_key
from core.sealing import seal_secrets, secrets_by_key
from tests.support.receiver import Receiver
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil, status_is
from tests.workers.process import ROOT, WorkerProcess
from workers.sealer import APPLICATION_NAME, Sealer


def _wait(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _stored(db_url: str) -> dict[str, Any]:
    with rows.connect(db_url) as conn:
        row = conn.execute("SELECT * FROM actions ORDER BY id LIMIT 1").fetchone()
    assert row is not None
    return row


def _listening(db_url: str) -> bool:
    """Whether the sealer has run its first statement, LISTEN."""
    with rows.connect(db_url) as conn:
        return bool(conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = %s AND query <> ''", (APPLICATION_NAME,)).fetchone()["n"])


def _new_delivery(db_url: str, action_id: int, trigger_id: int, log_index: int) -> int:
    with rows.connect(db_url) as conn:
        return rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                    event_id=rows.transfer_event(conn, log_index=log_index))


@pytest.mark.skipif(shutil.which("psql") is None or shutil.which("pg_dump") is None,
                    reason="psql and pg_dump are not installed")
def test_a_seeded_secret_is_sealed_on_first_sight_and_no_dump_holds_it(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    key = generate_key()
    keyring = Keyring.from_text(key)
    sealer = Sealer(plain_db_url, keyring, interval=3600)  # only the NOTIFY can wake it in time
    sealer.start()
    try:
        _wait(lambda: _listening(plain_db_url))
        seeded = subprocess.run(
            ["psql", plain_db_url, "-X", "-q", "-v", f"webhook_url={receiver.url}",
             "-v", f"webhook_secret={secret}", "-f", "scripts/seed/erc20_whale_transfers.sql"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert seeded.returncode == 0, seeded.stderr
        _wait(lambda: (_stored(plain_db_url)["secret"] or "").startswith(
            f"enc:v1:{keyring.current_id}:"), timeout=10)
    finally:
        sealer.stop()
    action = _stored(plain_db_url)
    assert "secret" not in action["config"]
    assert action["updated_at"] == action["created_at"], "sealing is not an edit"
    dump = subprocess.run(["pg_dump", "--no-owner", plain_db_url], capture_output=True,
                          text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert action["secret"] in dump.stdout  # the dump does hold the row, sealed
    for fragment in (secret, secret.removeprefix("whsec_"), secret.removeprefix("whsec_")[:24]):
        assert fragment not in dump.stdout
    # The workers open it and sign with it.
    install_runtime(plain_db_url, blockhook_encryption_key=key)
    delivery_id = _new_delivery(plain_db_url, action["id"], action["trigger_id"], 1)
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "delivered"))
    assert [r.verified for r in receiver.received()] == [True]


def test_endpoint_secret_rotation_sends_both_signatures_until_the_old_one_expires(
        plain_db_url: str, redis_client: redis.Redis, install_runtime: RuntimeFactory,
        work_until: WorkUntil) -> None:
    old, new = rows.new_secret(), rows.new_secret()
    key = generate_key()
    install_runtime(plain_db_url, blockhook_encryption_key=key)
    with Receiver() as receiver:  # records; verification below, against each secret
        [first] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=old)
        action = _stored(plain_db_url)
        with rows.connect(plain_db_url) as conn:
            seal_secrets(conn, Keyring.from_text(key))

        def deliver(log_index: int) -> dict[str, str]:
            delivery_id = first if log_index == 0 else _new_delivery(
                plain_db_url, action["id"], action["trigger_id"], log_index)
            rows.enqueue(redis_client, [delivery_id])
            work_until(status_is(plain_db_url, delivery_id, "delivered"))
            request = receiver.received()[-1]
            assert request.webhook_id == f"dlv_{delivery_id}"
            return {"body": request.body, **request.headers}

        def verifies(request: dict[str, str], secret: str) -> bool:
            headers = {k: v for k, v in request.items() if k != "body"}
            try:
                Webhook(secret).verify(request["body"], headers)
                return True
            except WebhookVerificationError:
                return False

        before = deliver(0)
        assert len(before["webhook-signature"].split()) == 1 and verifies(before, old)
        # The user rotates: a new secret in config; the old one keeps signing for a while.
        with rows.connect(plain_db_url) as conn:
            conn.execute("UPDATE actions SET config = config || %s",
                         (Jsonb({"secret": new, "previous_secret_ttl": 3600}),))
            seal_secrets(conn, Keyring.from_text(key))
        stored = _stored(plain_db_url)
        assert stored["previous_secret"].startswith("enc:v1:") and stored["secret"].startswith(
            "enc:v1:") and stored["previous_secret_expires_at"] > stored["updated_at"]
        during = deliver(1)
        assert len(during["webhook-signature"].split()) == 2
        assert verifies(during, old) and verifies(during, new)
        # The window ends: only the new secret signs, and the old one is dropped.
        with rows.connect(plain_db_url) as conn:
            conn.execute("UPDATE actions SET previous_secret_expires_at = now()")
        after = deliver(2)
        assert verifies(after, new) and not verifies(after, old)
        with rows.connect(plain_db_url) as conn:
            assert seal_secrets(conn, Keyring.from_text(key)).expired == 1
        assert _stored(plain_db_url)["previous_secret"] is None


def test_the_key_rotates_while_a_worker_delivers(
        plain_db_url: str, redis_url: str, redis_client: redis.Redis, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    old_key, new_key = generate_key(), generate_key()
    old_ring, new_ring = Keyring.from_text(old_key), Keyring.from_text(new_key)
    with Receiver(secret=secret) as receiver:
        rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret, count=0)
        action = _stored(plain_db_url)
        with rows.connect(plain_db_url) as conn:
            seal_secrets(conn, old_ring)
        # Every worker already accepts both keys (step 1 of the rotation).
        worker = WorkerProcess(db_url=plain_db_url, redis_url=redis_url,
                               env={"BLOCKHOOK_ENCRYPTION_KEY": f"{new_key},{old_key}"})
        sent: list[int] = []
        stop = threading.Event()

        def feed() -> None:  # deliveries keep coming before, during and after the rotation
            while not stop.is_set():
                sent.append(_new_delivery(plain_db_url, action["id"], action["trigger_id"],
                                          len(sent)))
                rows.enqueue(redis_client, sent[-1:])
                time.sleep(0.05)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            _wait(lambda: len(receiver.received()) >= 3)
            with rows.connect(plain_db_url) as conn:  # a secret written mid-rotation
                rows.insert_action(conn, action["trigger_id"],
                                   {"url": receiver.url, "secret": rows.new_secret()})
            rotated = subprocess.run(
                [sys.executable, "scripts/rotate_key.py"], cwd=ROOT, capture_output=True,
                text=True, timeout=60, env={**os.environ, "DATABASE_URL": plain_db_url,
                                            "BLOCKHOOK_ENCRYPTION_KEY": f"{new_key},{old_key}"})
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            assert "re-encrypted" in rotated.stdout and old_key not in rotated.stdout
            count = len(sent)
            _wait(lambda: len(sent) >= count + 3)
        finally:
            stop.set()
            feeder.join()
        try:
            _wait(lambda: all(rows.delivery(plain_db_url, i)["status"] == "delivered"
                              for i in sent), timeout=30)
        finally:
            worker.close()
        assert {r.webhook_id for r in receiver.received()} == {f"dlv_{i}" for i in sent}
        assert all(r.verified for r in receiver.received())
    with rows.connect(plain_db_url) as conn:
        assert secrets_by_key(conn) == {new_ring.current_id: 2}
    # The old key can go; a worker still holding only the old key retries, never fails.
    check = subprocess.run([sys.executable, "scripts/rotate_key.py", "--check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "DATABASE_URL": plain_db_url,
                                "BLOCKHOOK_ENCRYPTION_KEY": new_key})
    assert check.returncode == 0, check.stdout + check.stderr
    install_runtime(plain_db_url, blockhook_encryption_key=old_key)
    stale = _new_delivery(plain_db_url, action["id"], action["trigger_id"], 999)
    rows.enqueue(redis_client, [stale])
    work_until(lambda: rows.delivery(plain_db_url, stale)["attempts"] == 1)
    row = rows.delivery(plain_db_url, stale)
    assert row["status"] == "queued"
    assert f"sealed with key {new_ring.current_id}" in row["last_error"]
    assert old_ring.current_id in row["last_error"]

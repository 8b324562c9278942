"""The operator's retry of failed deliveries (``scripts/retry_failed.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from tests.support.receiver import Receiver, Step
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil, status_is
from tests.workers.process import ROOT


def _script(db_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "scripts/retry_failed.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_failed_delivery_retried_by_the_operator_is_delivered(
        plain_db_url: str, redis_url: str, redis_client: redis.Redis, receiver: Receiver,
        secret: str, install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    receiver.script(Step(status=410))
    failing, other = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret,
                                        count=2)
    with rows.connect(plain_db_url) as conn:
        conn.execute("UPDATE deliveries SET status = 'failed' WHERE id = %s", (other,))
    rows.enqueue(redis_client, [failing])
    work_until(status_is(plain_db_url, failing, "failed"))

    dry = _script(plain_db_url, redis_url, "--id", str(failing), "--dry-run")
    assert dry.returncode == 0 and f"would retry 1 failed deliveries: [{failing}]" in dry.stdout
    assert rows.delivery(plain_db_url, failing)["status"] == "failed"

    result = _script(plain_db_url, redis_url, "--id", str(failing))
    assert result.returncode == 0, result.stderr
    assert "retried 1 failed deliveries" in result.stdout
    row = rows.delivery(plain_db_url, failing)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("queued", 0, 410)
    assert rows.delivery(plain_db_url, other)["status"] == "failed"  # not selected

    work_until(status_is(plain_db_url, failing, "delivered"))
    assert [r.answered for r in receiver.received()] == [410, 200]

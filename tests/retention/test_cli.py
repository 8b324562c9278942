"""``scripts/retention.py`` as users run it, on both backends: ``--dry-run`` changes nothing and
counts exactly what the pass then deletes; the pass prints what it did; bad settings are one
line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from core.db import connect
from tests.retention.rows import action, days, delivery, insert_events, set_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _retention(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "scripts/retention.py", *args], cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": url, **env}, capture_output=True,
                          text=True, timeout=60)


def _snapshot(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                for table in ("events", "event_batches", "deliveries", "reorgs", "blocks")}


async def test_dry_run_counts_what_the_pass_deletes(db_url: str) -> None:
    now = datetime.now(UTC)
    conn = await connect(db_url)
    try:
        old = await insert_events(conn, blocks=range(1, 41), at=now - days(45), per_block=5)
        await insert_events(conn, blocks=range(41, 51), at=now - days(1), per_block=5)
        await set_checkpoint(conn, 1000)
        ids = await action(conn)
        await delivery(conn, ids, old[0], status="delivered", created=now - days(45))
        await delivery(conn, ids, old[1], status="pending", created=now - days(45))  # pins old[1]
        await conn.execute("UPDATE event_batches SET processed_at = now() - interval '2 days'")
    finally:
        await conn.close()
    before = _snapshot(db_url)

    dry = _retention(db_url, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert _snapshot(db_url) == before
    storage = plan["horizon"]["storage"]
    # The Apache-2 TimescaleDB build here has no compression: detected and said, not assumed.
    assert plan["horizon"]["compression"] == ("unavailable" if storage == "timescaledb"
                                              else "not applicable")
    if storage == "timescaledb":
        assert "license is 'apache'" in plan["horizon"]["compression_detail"]
    # Plain: every old event but the one an undelivered delivery points to. TimescaleDB: the
    # pinned event holds back its chunk — the old events share it, so no chunk is due.
    expected_events = 199 if storage == "plain" else 0
    assert plan["would_delete"] == {"events": expected_events, "event_batches": 2,
                                    "deliveries": 1, "reorgs": 0, "blocks": 0}
    if storage == "timescaledb":
        assert [pin["reason"] for pin in plan["horizon"]["held_back_by"]] == [
            "undelivered deliveries"]

    done = _retention(db_url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == plan["would_delete"]
    assert json.loads(done.stdout)["compression"] == plan["horizon"]["compression"]
    again = json.loads(_retention(db_url, "--dry-run", "--json").stdout)
    assert set(again["would_delete"].values()) == {0}

    readable = _retention(db_url, "--dry-run", COLUMNS="200")
    assert readable.returncode == 0 and "would delete" in readable.stdout
    assert "nothing was changed" in readable.stdout


def test_bad_settings_and_unreachable_database_are_one_line(plain_db_url: str) -> None:
    bad = _retention(plain_db_url, "--dry-run", RETENTION_EVENTS="30")
    assert bad.returncode == 2 and "RETENTION_EVENTS" in bad.stderr
    assert bad.stderr.count("\n") == 1
    gone = _retention("postgresql://postgres@127.0.0.1:1/nowhere")
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1
    assert "cannot connect to the database" in gone.stderr

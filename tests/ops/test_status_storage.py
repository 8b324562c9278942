"""``scripts/status.py``: storage (table sizes, oldest row per table, the retention horizon and
what holds it back, compression) on both backends, and ``--watch`` redrawing in place."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.db import connect
from tests.retention.rows import action, days, delivery, insert_events, set_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "REDIS_URL": "redis://127.0.0.1:1/0",
            "RETENTION_EVENTS": "30d", "RETENTION_DELIVERIES": "60d", "COLUMNS": "160"}


def _status(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "scripts/status.py", *args, "--rpc-url",
                           "http://127.0.0.1:1"], cwd=ROOT, env=_env(url), capture_output=True,
                          text=True, timeout=60)


async def test_status_shows_sizes_oldest_rows_and_the_retention_horizon(db_url: str) -> None:
    now = datetime.now(UTC)
    conn = await connect(db_url)
    try:
        [old] = await insert_events(conn, blocks=range(7, 8), at=now - days(45))
        await insert_events(conn, blocks=range(8, 18), at=now - days(1), per_block=20)
        await set_checkpoint(conn, 10_000)  # the window (above 9872) holds none of them
        created = now - days(2)
        await delivery(conn, await action(conn), old, status="pending", created=created)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    result = _status(db_url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    tables = {t["name"]: t for t in report["tables"]}
    assert set(tables) >= {"events", "blocks", "checkpoints", "reorgs", "deliveries",
                           "event_batches", "deferred_matches", "triggers", "actions"}
    assert tables["events"]["bytes"] > 0 and tables["events"]["rows"] == 201
    assert datetime.fromisoformat(tables["events"]["oldest"]) == now - days(45)
    assert datetime.fromisoformat(tables["deliveries"]["oldest"]) == created
    assert tables["reorgs"]["oldest"] is None and tables["events"]["oldest_column"] == "block_time"

    retention = report["retention"]
    assert retention["settings"]["events"] == "30d" and retention["settings"]["deliveries"] == "60d"
    generated = datetime.fromisoformat(report["generated_at"])
    cutoff = datetime.fromisoformat(retention["cutoffs"]["events"])
    assert abs((generated - timedelta(days=30)) - cutoff) < timedelta(minutes=1)
    # The undelivered delivery pins its 45-day-old event: the horizon is held back to it.
    assert [pin["reason"] for pin in retention["held_back_by"]] == ["undelivered deliveries"]
    assert datetime.fromisoformat(retention["events_effective"]) == now - days(45)
    assert retention["compression"] == ("unavailable" if report["storage_path"] == "timescaledb"
                                        else "not applicable")

    if report["storage_path"] != "plain":
        return  # the readable rendering is the same code on both backends
    readable = _status(db_url)
    assert readable.returncode == 0, readable.stderr
    assert "storage" in readable.stdout and "held back" in readable.stdout
    assert "undelivered deliveries" in readable.stdout


def test_watch_redraws_in_place_until_ctrl_c(plain_db_url: str) -> None:
    """On a terminal (a pseudo-terminal here), --watch rewrites the same lines (cursor up and
    erase) rather than scrolling new copies, and Ctrl-C ends it with exit 0."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "scripts/status.py", "--watch", "0.3",
                                "--rpc-url", "http://127.0.0.1:1"], cwd=ROOT,
                               env={**_env(plain_db_url), "TERM": "xterm"}, stdin=follower,
                               stdout=follower, stderr=follower, start_new_session=True)
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while output.count(b"blockhook status") < 3 and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                output += os.read(leader, 65536)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    text = output.decode(errors="replace")
    assert text.count("blockhook status") >= 3, text[-2000:]
    # Between two frames Live moves the cursor back up and erases the lines it drew.
    second_frame = text.index("blockhook status", text.index("blockhook status") + 1)
    assert "\x1b[2K" in text[:second_frame] and "\x1b[1A" in text[:second_frame]

"""``python scripts/retention.py [--dry-run] [--json]``: run a retention pass now.

The processor runs the same pass every ``RETENTION_INTERVAL`` seconds; this command is for cron
(with ``RETENTION_INTERVAL=0`` on the processors), a first clean-up, or a look at what would go.

- without options: one whole pass (``retention.runner``), paced like the processor's (slices of
  half a second of work, each followed by three times as long a pause, so live ingest keeps
  most of the database); if
  another runner (a processor) is in the middle of one, it says so once and waits for it
  (Ctrl-C aborts: exit 130, nothing is left half-done). Prints rows deleted per table, chunks
  dropped or compressed, bytes freed.
- ``--no-pause``: the same pass as fast as the database allows (a maintenance window).
- ``--dry-run``: prints the horizon of each kind of data, what holds the events horizon back and
  what a pass would delete and compress now; writes nothing and takes no lock.

Exit codes: 0 done, 1 one-line error (database unreachable or refusing), 2 bad settings, 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from core.db import connect  # noqa: E402
from core.errors import PermanentError  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.settings import RetentionSettings, load_settings  # noqa: E402
from retention.plan import Plan, plan  # noqa: E402
from retention.policy import RetentionPolicy  # noqa: E402
from retention.runner import SLICE_SECONDS, PassReport, RetentionRunner, pause_after  # noqa: E402

WAIT_SECONDS = 1.0


def _when(value: Any) -> str:
    return "kept forever" if value is None else f"{value:%Y-%m-%d %H:%M} UTC"


def _bytes(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


def print_plan(result: Plan, console: Console) -> None:
    horizon = result.horizon
    console.print(f"[bold]retention dry run[/] at {_when(horizon.now)}, storage: "
                  f"[cyan]{horizon.storage}[/] — nothing was changed")
    table = Table(title_justify="left")
    for column in ("kind", "setting", "older than this goes", "would delete"):
        table.add_column(column, justify="right" if column == "would delete" else "left")
    for kind in ("events", "event_batches", "deliveries", "reorgs", "blocks"):
        cutoff = horizon.cutoffs.get(kind)
        table.add_row(kind, horizon.settings[kind],
                      "below the reorg window" if kind == "blocks" else _when(cutoff),
                      f"{result.would_delete.get(kind, 0):,}")
    console.print(table)
    if horizon.held_back_by:
        console.print(f"events horizon held back to {_when(horizon.events_effective)} by:")
        for pin in horizon.held_back_by:
            console.print(f"  - {pin.reason} (since {_when(pin.since)})")
    for chunk in result.chunks_to_drop:
        console.print(f"chunk to drop: {chunk.chunk} [{_when(chunk.range_start)} .. "
                      f"{_when(chunk.range_end)}), {chunk.rows:,} rows, {_bytes(chunk.bytes)}")
    console.print(f"compression: {horizon.compression} — {horizon.compression_detail}")
    for name in result.chunks_to_compress:
        console.print(f"chunk to compress: {name}")


def print_pass(report: PassReport, seconds: float, console: Console) -> None:
    deleted = ", ".join(f"{table} {rows:,}" for table, rows in report.deleted.items())
    console.print(f"[bold]retention pass[/] done in {seconds:.1f} s — rows deleted: {deleted}")
    if report.chunks_dropped:
        console.print(f"events chunks dropped: {len(report.chunks_dropped)} "
                      f"({_bytes(report.bytes_freed)})")
    if report.chunks_compressed:
        console.print(f"events chunks compressed: {len(report.chunks_compressed)}")
    if report.held_back_by:
        console.print(f"events horizon held back by: {report.held_back_by}")
    for reason in report.deferred:
        console.print(f"[yellow]put off: {reason}[/]")


async def run_pass(database_url: str, runner: RetentionRunner, *, pause: bool,
                   console: Console) -> tuple[PassReport, float]:
    """One whole pass, in paced slices unless ``pause`` is False; waits while another runner
    holds the retention lock."""
    conn = await connect(database_url)
    try:
        waited = False
        total: PassReport | None = None
        started = time.monotonic()
        while True:
            slice_started = time.monotonic()
            report = await runner.run(conn, slice_seconds=SLICE_SECONDS if pause else None)
            if report is None:
                if not waited:
                    console.print("waiting: another retention pass is running (a processor); "
                                  "this one starts when it ends. Ctrl-C to abort.",
                                  style="yellow")
                    waited = True
                await asyncio.sleep(WAIT_SECONDS)
                continue
            if total is None:
                total, started = report, slice_started
            else:
                total.add(report)
            if report.done:
                return total, time.monotonic() - started
            await asyncio.sleep(pause_after(time.monotonic() - slice_started))
    finally:
        await conn.close()


async def dry_run(database_url: str, policy: RetentionPolicy) -> Plan:
    conn = await connect(database_url)
    try:
        return await plan(conn, policy)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python scripts/retention.py",
        description="Delete what has aged out under the RETENTION_* settings (never what the "
                    "pipeline still needs); --dry-run shows what would go.")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what a pass would delete and compress; change nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-pause", action="store_true",
                        help="do not pace the pass (by default each half second of work is "
                             "followed by a pause three times as long, as in the processor)")
    args = parser.parse_args(argv)
    settings = load_settings(RetentionSettings)
    # What the pass did is printed below; log lines only for warnings (a slice put off, say).
    configure_logging(level="WARNING", fmt=settings.log_format, service="retention")
    policy = RetentionPolicy.from_settings(settings)
    console = Console(stderr=args.json)
    try:
        if args.dry_run:
            result = asyncio.run(dry_run(settings.database_url, policy))
            if args.json:
                print(result.model_dump_json(indent=2))
            else:
                print_plan(result, console)
            return
        runner = RetentionRunner(policy)
        report, seconds = asyncio.run(run_pass(settings.database_url, runner,
                                               pause=not args.no_pause, console=console))
    except KeyboardInterrupt:
        print("retention: interrupted (every statement is its own transaction: nothing is "
              "half-done)", file=sys.stderr)
        raise SystemExit(130) from None
    except (PermanentError, asyncpg.PostgresError, OSError) as error:
        print(f"retention: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        print(_pass_json(report, seconds, runner))
    else:
        print_pass(report, seconds, console)
        if runner.compression is not None:
            console.print(f"compression: {runner.compression.state} — "
                          f"{runner.compression.detail}")


def _pass_json(report: PassReport, seconds: float, runner: RetentionRunner) -> str:
    compression = runner.compression
    return json.dumps({"seconds": round(seconds, 3), "deleted": report.deleted,
                       "chunks_dropped": report.chunks_dropped, "bytes_freed": report.bytes_freed,
                       "chunks_compressed": report.chunks_compressed,
                       "held_back_by": report.held_back_by, "deferred": report.deferred,
                       "compression": compression.state if compression else None}, indent=2)


if __name__ == "__main__":
    main()

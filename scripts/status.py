"""``python scripts/status.py [--json] [--watch [SECONDS]] [--rpc-url URL ...]``: what the
pipeline is doing now.

Per chain: the node's head (when an RPC URL for that chain answers), the checkpoint, the lag,
events valid/invalidated, the last reorg and the processor's backlog (unprocessed
``event_batches`` and their events, oldest age). Then each RPC endpoint as the chain's indexer
sees it (state, head, lag, health score, latency, errors: the ``rpc_endpoints`` rows the active
indexer rewrites every few seconds, with their age), the RQ delivery queue (depth, failed jobs),
deliveries by status created in the last hour, and invalid triggers with their errors. Then
storage: each table's size, estimated rows and oldest row, the retention horizon of each kind of
data (``RETENTION_*``), what holds the events horizon back, and whether compression is on.

``--watch`` redraws the same screen in place every SECONDS (default 5) until Ctrl-C (exit 0);
a database that goes away meanwhile is shown, and the next refresh tries again.

Endpoints appear only in their redacted form (``core.redact``): API keys in ``RPC_URL`` never
reach the output. The live probe of ``RPC_URL`` (or ``--rpc-url``) gives each node's head now,
independently of whether an indexer is running.

Read-only: it never writes to the database or Redis. An unreachable node or Redis is reported,
not fatal; an unreachable database exits 1 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from rich.console import Console, RenderableType  # noqa: E402
from rich.live import Live  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from core.db import connect, storage_path  # noqa: E402
from core.errors import PermanentError  # noqa: E402
from core.redact import redact_urls_in  # noqa: E402
from core.settings import IngestSettings, RetentionSettings, load_settings  # noqa: E402
from retention.inventory import TableStat, table_stats  # noqa: E402
from retention.plan import Horizon, horizon  # noqa: E402
from retention.policy import RetentionPolicy  # noqa: E402
from scripts.ops.rpc import NodeHead, node_head  # noqa: E402
from scripts.ops.status_queries import (  # noqa: E402
    ChainStatus,
    CircuitRow,
    EndpointRow,
    InvalidTriggerRow,
    QueueStatus,
    chain_statuses,
    circuit_rows,
    deliveries_last_hour,
    endpoint_rows,
    in_flight_deliveries,
    invalid_triggers,
    open_deliveries,
    queue_status,
)


class StatusReport(BaseModel):
    """The ``--json`` document (stable keys; ``null`` where a value is unknown)."""

    generated_at: datetime
    storage_path: str
    chains: list[ChainStatus]
    queue: QueueStatus
    deliveries_last_hour: dict[str, int]
    deliveries_open: int
    deliveries_in_flight: int
    # Webhook endpoints whose circuit breaker holds deliveries back (workers report them).
    webhook_circuits: list[CircuitRow]
    invalid_triggers: list[InvalidTriggerRow]
    nodes: list[NodeHead]
    tables: list[TableStat]  # largest first
    retention: Horizon
    endpoints: list[EndpointRow]


async def collect(database_url: str, redis_url: str, rpc_urls: list[str],
                  policy: RetentionPolicy | None = None) -> StatusReport:
    """Gather the report: database and Redis queries, node heads asked concurrently."""
    heads = await asyncio.gather(*(node_head(url) for url in rpc_urls))
    conn = await connect(database_url, timeout=10)
    try:
        known_heads = {h.chain_id: h.head for h in heads
                       if h.chain_id is not None and h.head is not None}
        storage = await storage_path(conn)
        report = StatusReport(
            generated_at=datetime.now(UTC),
            storage_path=storage,
            chains=await chain_statuses(conn, known_heads),
            queue=await asyncio.to_thread(queue_status, redis_url),
            deliveries_last_hour=await deliveries_last_hour(conn),
            deliveries_open=await open_deliveries(conn),
            deliveries_in_flight=await in_flight_deliveries(conn),
            webhook_circuits=await asyncio.to_thread(circuit_rows, redis_url),
            invalid_triggers=await invalid_triggers(conn),
            nodes=list(heads),
            tables=await table_stats(conn, storage=storage),
            retention=await horizon(conn, policy or RetentionPolicy()),
            endpoints=await endpoint_rows(conn),
        )
    finally:
        await conn.close()
    return report


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _value(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def render(report: StatusReport, console: Console) -> None:
    """Readable tables for a terminal."""
    console.print(f"[bold]blockhook status[/] at {report.generated_at:%Y-%m-%d %H:%M:%S} UTC, "
                  f"storage: [cyan]{report.storage_path}[/]")
    # Metrics as rows and chains as columns: stays readable in 80 columns for a few chains.
    chains = Table(title="chains", title_justify="left")
    chains.add_column("chain")
    for chain in report.chains:
        chains.add_column(str(chain.chain_id), justify="right")

    def add(label: str, cells: list[str]) -> None:
        chains.add_row(label, *cells)

    add("node head", [_value(c.node_head) for c in report.chains])
    add("checkpoint", [_value(c.checkpoint) for c in report.chains])
    add("lag (blocks)", [f"[yellow]{c.lag_blocks:,}[/]" if (c.lag_blocks or 0) > 10
                         else _value(c.lag_blocks) for c in report.chains])
    add("events valid", [_value(c.events_valid) for c in report.chains])
    add("events invalidated", [_value(c.events_invalidated) for c in report.chains])
    add("last reorg", [f"depth {c.last_reorg.depth} at #{c.last_reorg.common_ancestor}, "
                       f"{_age(c.last_reorg.age_seconds)} ago" if c.last_reorg else "-"
                       for c in report.chains])
    add("processor backlog", [f"{c.unprocessed_batches:,} batches, {c.unprocessed_events:,} events"
                              for c in report.chains])
    add("oldest unprocessed", [_age(c.oldest_unprocessed_age_seconds) for c in report.chains])
    add("awaiting confirmations", [_value(c.deferred_matches) for c in report.chains])
    add("enabled triggers", [_value(c.triggers_enabled) for c in report.chains])
    console.print(chains)
    for node in report.nodes:
        if node.error:
            console.print(f"[yellow]node {node.url}: {node.error}[/]")
    render_endpoints(report.endpoints, console)

    queue = report.queue
    if queue.error:
        console.print(f"[red]queue {queue.name}: Redis unreachable ({queue.error})[/]")
    else:
        console.print(f"queue [bold]{queue.name}[/]: {queue.depth:,} waiting, {queue.started:,} "
                      f"running, {queue.scheduled:,} scheduled, "
                      f"{'[red]' if queue.failed else ''}{queue.failed:,} failed jobs"
                      f"{'[/]' if queue.failed else ''}, {queue.workers} workers; "
                      f"{queue.history_depth:,} refire jobs waiting behind it")

    deliveries = Table(title="deliveries created in the last hour", title_justify="left")
    for status in report.deliveries_last_hour:
        deliveries.add_column(status, justify="right")
    deliveries.add_row(*(f"{count:,}" for count in report.deliveries_last_hour.values()))
    console.print(deliveries)
    console.print(f"open deliveries (pending or queued, any age): {report.deliveries_open:,}, "
                  f"{report.deliveries_in_flight:,} in flight")
    if report.webhook_circuits:
        circuits = Table(title="webhook endpoints paused by their circuit breaker",
                         title_justify="left")
        circuits.add_column("endpoint", no_wrap=True)
        for column in ("circuit", "failures", "waiting", "open for", "last error"):
            circuits.add_column(column)
        for circuit in report.webhook_circuits:
            circuits.add_row(circuit.endpoint, circuit.circuit, str(circuit.failures),
                             f"{circuit.waiting:,}", _age(circuit.open_for_seconds),
                             circuit.last_error or "")
        console.print(circuits)
    else:
        console.print("webhook endpoints paused: none")

    if report.invalid_triggers:
        broken = Table(title="invalid triggers (skipped by the processor)", title_justify="left")
        for column in ("id", "name", "chain", "enabled", "error"):
            broken.add_column(column)
        for trigger in report.invalid_triggers:
            broken.add_row(str(trigger.id), trigger.name, str(trigger.chain_id),
                           str(trigger.enabled), trigger.error)
        console.print(broken)
    else:
        console.print("invalid triggers: none")
    render_storage(report, console)


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size //= 1024
    return str(size)


def _since(report: StatusReport, moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{moment:%Y-%m-%d %H:%M} ({_age((report.generated_at - moment).total_seconds())} ago)"


# Which retention setting governs which table (the others are configuration or state).
_RETAINED = {"events": "events", "event_batches": "event_batches", "deliveries": "deliveries",
             "reorgs": "reorgs", "blocks": "blocks"}


def render_storage(report: StatusReport, console: Console) -> None:
    """Table sizes, oldest rows and the retention horizon of each kind of data."""
    retention = report.retention
    tables = Table(title="storage", title_justify="left")
    for column in ("table", "size", "rows (est.)", "oldest row", "retention", "horizon"):
        tables.add_column(column, justify="right" if column in ("size", "rows (est.)") else "left")
    for stat in report.tables:
        kind = _RETAINED.get(stat.name)
        setting = retention.settings[kind] if kind else "-"
        cutoff = retention.cutoffs.get(kind) if kind else None
        horizon_text = ("below the reorg window" if kind == "blocks"
                        else f"{cutoff:%Y-%m-%d %H:%M}" if cutoff
                        else "kept forever" if kind else "-")
        tables.add_row(stat.name, _size(stat.bytes), _value(stat.rows), _since(report, stat.oldest),
                       setting, horizon_text)
    console.print(tables)
    if retention.held_back_by:
        console.print(f"[yellow]events horizon held back to {retention.events_effective:%Y-%m-%d %H:%M}"
                      f"[/] by: " + "; ".join(f"{pin.reason} (since {pin.since:%Y-%m-%d %H:%M})"
                                             for pin in retention.held_back_by))
    console.print(f"events compression: {retention.compression} ({retention.compression_detail})")


def snapshot(report: StatusReport, *, width: int, color_system: str | None) -> Text:
    """The rendered screen as one renderable (for ``--watch``): ``render`` into a buffer."""
    buffer = io.StringIO()
    render(report, Console(file=buffer, width=width, force_terminal=color_system is not None,
                           color_system=color_system))  # type: ignore[arg-type]
    return Text.from_ansi(buffer.getvalue())


def watch(collect_report: Callable[[], StatusReport], interval: float) -> None:
    """Redraw the status in place every ``interval`` seconds until Ctrl-C. A database lost
    meanwhile is shown in place of the report until it answers again."""
    console = Console()

    def screen() -> RenderableType:
        return snapshot(collect_report(), width=console.width, color_system=console.color_system)

    current = screen()  # an unreachable database at start is the caller's one-line error
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(current, refresh=True)
            time.sleep(interval)
            try:
                current = screen()
            except (PermanentError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                current = Text(f"{datetime.now(UTC):%H:%M:%S} {error} — retrying every "
                               f"{interval:g} s", style="red")


# An indexer rewrites its rows every few seconds: older ones describe a stopped indexer.
STALE_ENDPOINT_SECONDS = 60


def render_endpoints(endpoints: list[EndpointRow], console: Console) -> None:
    if not endpoints:
        console.print("RPC endpoints: no indexer has reported yet")
        return
    table = Table(title="RPC endpoints, as each chain's indexer sees them", title_justify="left")
    for column in ("chain", "endpoint", "state", "head", "lag", "score", "latency", "calls",
                   "errors", "last error", "seen"):
        table.add_column(column, justify="right" if column in (
            "head", "lag", "score", "latency", "calls", "errors") else "left")
    colour = {"ok": "green", "degraded": "yellow", "behind": "yellow", "down": "red",
              "wrong_chain": "red", "unverified": "yellow"}
    for row in endpoints:
        stale = row.age_seconds > STALE_ENDPOINT_SECONDS
        table.add_row(
            str(row.chain_id), row.endpoint, f"[{colour.get(row.state, 'white')}]{row.state}[/]",
            _value(row.head), _value(row.lag_blocks), f"{row.health_score:.2f}",
            "-" if row.latency_ms is None else f"{row.latency_ms:.0f} ms", _value(row.requests),
            _value(row.errors), row.last_error or "-",
            f"[yellow]{_age(row.age_seconds)} ago (indexer stopped?)[/]" if stale
            else f"{_age(row.age_seconds)} ago")
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python scripts/status.py",
        description="Per chain: node head, checkpoint, lag, events, last reorg, processor "
                    "backlog; each RPC endpoint's state; the delivery queue; deliveries of the "
                    "last hour; invalid triggers.")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                        help="redraw in place every SECONDS (default 5) until Ctrl-C")
    parser.add_argument("--rpc-url", action="append", dest="rpc_urls", metavar="URL",
                        help="a node to ask for its chain id and head (repeatable; "
                             "default: every endpoint of RPC_URL)")
    args = parser.parse_args(argv)
    if args.watch is not None and (args.json or args.watch <= 0):
        parser.error("--watch takes a positive number of seconds and does not go with --json")
    settings = load_settings(IngestSettings)
    policy = RetentionPolicy.from_settings(load_settings(RetentionSettings))
    rpc_urls = args.rpc_urls if args.rpc_urls is not None else settings.rpc_endpoints

    def collect_report() -> StatusReport:
        return asyncio.run(collect(settings.database_url, settings.redis_url, rpc_urls, policy))

    try:
        if args.watch is not None:
            watch(collect_report, args.watch)
        report = collect_report()
    except PermanentError as error:
        print(f"status: {redact_urls_in(str(error))}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        return
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        render(report, Console())


if __name__ == "__main__":
    main()

"""``python scripts/replay.py --chain-id C --from-block B [--to-block E] [--refire] [--dry-run]``

Re-ingest blocks B..E (default: up to head − ``CONFIRMATIONS``) from ``RPC_URL`` through the
indexer's own code path (``ingest.replay``): adaptive ranges, RPC fault handling, logs checked
against their block hashes. Logs already stored change nothing and fire nothing; missing ones are
stored and processed by the running processor like live ones; stored blocks that are no longer
canonical are handled as a reorg (invalidated, ``event.removed`` for what was sent).

``--refire`` then evaluates the range's stored, valid events again (``processor.refire``) and
creates deliveries only for (action, event) pairs that never had a ``matched`` delivery — a new
trigger's history; they are sent with ``"replay": true``. Running it twice fires nothing twice.

``--dry-run`` reads the chain and the database and prints what would happen — blocks, logs to
add, events to invalidate, deliveries per trigger — and writes nothing (no lock taken).

Alongside a live indexer: nothing is stopped. Blocks the indexer never writes again (below its
checkpoint minus ``REORG_WINDOW``, or finalized) are replayed while it runs; the rest of the range
(its reorg window, and anything above its checkpoint) is left to it and the summary says which
blocks those are. With no indexer running, replay writes the whole range itself
(``ingest.replay`` explains the split).

Ctrl-C: the current range commits and the replay stops; run the same command again to resume
where it stopped (``--restart`` starts over; either way is correct, replay is idempotent). A
second Ctrl-C aborts at once (the open transaction rolls back).

Exit codes: 0 done, 1 permanent error (one line: wrong chain, database unreachable…), 2 bad
arguments or settings, 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from core.db import connect, create_pool  # noqa: E402
from core.errors import ChainMismatch, PermanentError  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.redact import redact_urls_in  # noqa: E402
from core.settings import IngestSettings, load_settings  # noqa: E402
from ingest.endpoints import EndpointPool  # noqa: E402
from ingest.fetch import retry_rpc  # noqa: E402
from ingest.finality import ingest_target  # noqa: E402
from ingest.replay import ReplayResult, replay  # noqa: E402
from ingest.rpc import ChainSource  # noqa: E402
from processor.refire import BLOCK_PAGE, refire  # noqa: E402
from processor.registry import TriggerRegistry, fetch_trigger_rows  # noqa: E402
from scripts.ops.dry_run import RecordingSource, new_log_deliveries  # noqa: E402
from scripts.ops.replay_state import (  # noqa: E402
    ReplayState,
    clear_state,
    load_state,
    save_state,
    state_path,
)

INTERRUPTED_EXIT = 130


class BlocksPerSecondColumn(ProgressColumn):
    """``1,234 blocks/s`` from rich's moving-window speed estimate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} blocks/s" if speed else "- blocks/s", style="cyan")


@dataclass
class Summary:
    """What the command did (or, with ``--dry-run``, would do); printed as a table or JSON."""

    chain_id: int
    from_block: int
    to_block: int
    dry_run: bool
    refire: bool
    resumed_from: int | None = None
    blocks: int = 0
    logs_added: int = 0
    events_invalidated: int = 0
    divergent_blocks: list[int] = field(default_factory=list)
    checkpoint: int | None = None
    # Replayed alongside the live indexer up to this block; blocks from left_to_indexer on were
    # its own (reorg window, above the checkpoint) and not replayed.
    settled_through: int | None = None
    left_to_indexer: int | None = None
    refire_events: int = 0
    # trigger name → deliveries: from the logs the replay adds / from --refire (history).
    new_log_deliveries: dict[str, int] = field(default_factory=dict)
    refire_deliveries: dict[str, int] = field(default_factory=dict)
    refire_enqueued: bool | None = None
    interrupted: bool = False
    replay_seconds: float = 0.0
    refire_seconds: float = 0.0
    seconds: float = 0.0


class ReplayCommand:
    """One run of the command: phases, progress bar, resume state, Ctrl-C."""

    def __init__(self, args: argparse.Namespace, settings: IngestSettings, console: Console) -> None:
        self.args = args
        self.settings = settings
        self.console = console
        self.stop = asyncio.Event()
        self.state_file = state_path(args.chain_id, args.from_block, args.to_block, args.refire)
        self.state: ReplayState | None = None
        self._waiting_since: float | None = None
        self._state_warned = False

    # ------------------------------------------------------------------ the whole command

    async def run(self, progress: Progress) -> Summary:
        started = time.monotonic()
        async with EndpointPool(self.settings.rpc_endpoints, timeout=self.settings.rpc_timeout,
                                max_response_bytes=self.settings.rpc_max_response_bytes) as client:
            node_chain = await retry_rpc("eth_chainId", client.chain_id)
            if node_chain != self.args.chain_id:
                raise ChainMismatch(f"--chain-id {self.args.chain_id} but the node at "
                                    f"{client.answering()} reports chain {node_chain}")
            to_block = await self._resolve_range(client)
            summary = Summary(self.args.chain_id, self.args.from_block, to_block,
                              self.args.dry_run, self.args.refire)
            await self._ingest_phase(client, progress, summary)
            summary.replay_seconds = round(time.monotonic() - started, 3)
            if not summary.interrupted and self.args.refire:
                refire_started = time.monotonic()
                await self._refire_phase(progress, summary)
                summary.refire_seconds = round(time.monotonic() - refire_started, 3)
        if not summary.interrupted and not self.args.dry_run:
            clear_state(self.state_file)
        summary.seconds = round(time.monotonic() - started, 3)
        return summary

    async def _resolve_range(self, client: ChainSource) -> int:
        if not self.args.dry_run and not self.args.restart:
            self.state = load_state(self.state_file)
        if self.state is not None:
            return self.state.to_block
        if self.args.to_block is not None:
            to_block = int(self.args.to_block)
        else:
            _, to_block = await retry_rpc(
                "eth_blockNumber", lambda: ingest_target(client, self.settings.confirmations))
        if to_block < self.args.from_block:
            raise PermanentError(f"empty range: --from-block {self.args.from_block} is above "
                                 f"block {to_block}")
        if not self.args.dry_run:
            self.state = ReplayState(chain_id=self.args.chain_id, from_block=self.args.from_block,
                                     to_block=to_block, refire=self.args.refire)
        return to_block

    # ------------------------------------------------------------------ phase 1: re-ingest

    async def _ingest_phase(self, client: ChainSource, progress: Progress,
                            summary: Summary) -> None:
        total = summary.to_block - summary.from_block + 1
        start = summary.from_block
        if self.state is not None and self.state.ingested_through is not None:
            start = self.state.ingested_through + 1
            summary.resumed_from = start
            self.console.print(f"resuming: blocks {summary.from_block}..{start - 1} were replayed "
                               "by an earlier run (--restart to start over)")
        done_before = start - summary.from_block
        task = progress.add_task("replay" if not self.args.dry_run else "replay (dry run)",
                                 total=total, completed=done_before)
        summary.blocks = done_before
        if start > summary.to_block:
            return

        registry: TriggerRegistry | None = None
        source: ChainSource = client
        if self.args.dry_run:
            registry = await self._registry()
            source = RecordingSource(client, registry, summary.chain_id)

        def on_progress(blocks_done: int, _total: int) -> None:
            self._waiting_since = None
            progress.update(task, completed=done_before + blocks_done,
                            description="replay" if not self.args.dry_run else "replay (dry run)")
            if self.state is not None:
                self.state.ingested_through = start + blocks_done - 1
                self._save_state()

        result = await replay(self.settings, source, from_block=start, to_block=summary.to_block,
                              dry_run=self.args.dry_run, progress=on_progress,
                              on_wait=lambda pid: self._on_wait(progress, task, pid),
                              stop=self.stop)
        self._merge(summary, result, done_before)
        if result.left_to_indexer is not None:
            progress.update(task, description="replay (the rest is the live indexer's)")
        # No log to add means no delivery from new logs: skip the lookup (the common dry run
        # over a complete range, where every recorded candidate is stored already).
        if self.args.dry_run and isinstance(source, RecordingSource) and registry is not None \
                and result.logs_added:
            conn = await connect(self.settings.database_url)
            try:
                counts = await new_log_deliveries(conn, source, registry)
            finally:
                await conn.close()
            summary.new_log_deliveries = {registry.by_id[t].name: n for t, n in counts.items()}

    def _save_state(self) -> None:
        """Save the resume position; a read-only home only costs resuming (said once)."""
        if self.state is None:
            return
        try:
            save_state(self.state_file, self.state)
        except OSError as error:
            if not self._state_warned:
                self.console.print(f"[yellow]cannot save the resume position ({error}); the "
                                   "replay goes on, but a rerun would start over (set "
                                   "XDG_STATE_HOME to a writable directory)[/]")
                self._state_warned = True

    def _on_wait(self, progress: Progress, task: TaskID, holder_pid: int | None) -> None:
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
            holder = f" (database session pid {holder_pid})" if holder_pid else ""
            progress.console.print(
                f"[yellow]waiting for chain {self.args.chain_id}'s first checkpoint: an indexer "
                f"is starting{holder} and has stored nothing yet. The replay proceeds as soon "
                "as it has. Ctrl-C to abort.[/]")
        progress.update(task, description=f"waiting for the first checkpoint "
                                          f"({now - self._waiting_since:.0f}s)")

    @staticmethod
    def _merge(summary: Summary, result: ReplayResult, done_before: int) -> None:
        summary.blocks = done_before + result.blocks
        summary.logs_added = result.logs_added
        summary.events_invalidated = result.events_invalidated
        summary.divergent_blocks = result.divergent_blocks
        summary.checkpoint = result.checkpoint
        summary.interrupted = result.interrupted
        summary.settled_through = result.settled_through
        summary.left_to_indexer = result.left_to_indexer

    # ------------------------------------------------------------------ phase 2: refire

    async def _registry(self) -> TriggerRegistry:
        # Built from the rows without writing triggers.error (load_registry would): a dry run
        # writes nothing, and recording errors is the running processor's job.
        conn = await connect(self.settings.database_url)
        try:
            return TriggerRegistry.build(await fetch_trigger_rows(conn))
        finally:
            await conn.close()

    async def _refire_phase(self, progress: Progress, summary: Summary) -> None:
        start = summary.from_block
        if self.state is not None and self.state.refired_through is not None:
            start = self.state.refired_through + 1
        total = summary.to_block - summary.from_block + 1
        task = progress.add_task("refire" if not self.args.dry_run else "refire (dry run)",
                                 total=total, completed=start - summary.from_block)
        registry = await self._registry()
        conn = await connect(self.settings.database_url)
        pool = None if self.args.dry_run else await create_pool(self.settings.database_url,
                                                                 min_size=1, max_size=2)
        redis_client = None if self.args.dry_run else redis.Redis.from_url(
            self.settings.redis_url, socket_connect_timeout=3, socket_timeout=5)
        counts: dict[str, int] = {}
        enqueued = True
        try:
            for low in range(start, summary.to_block + 1, BLOCK_PAGE):
                if self.stop.is_set():
                    summary.interrupted = True
                    break
                high = min(low + BLOCK_PAGE - 1, summary.to_block)
                report = await refire(conn, chain_id=summary.chain_id, from_block=low,
                                      to_block=high, dry_run=self.args.dry_run,
                                      redis_client=redis_client, pool=pool, registry=registry)
                summary.refire_events += report.events
                for entry in report.per_trigger.values():
                    counts[entry.name] = counts.get(entry.name, 0) + entry.deliveries
                if report.delivery_ids and redis_client is not None:
                    enqueued = enqueued and await self._all_queued(conn, report.delivery_ids)
                progress.update(task, completed=high - summary.from_block + 1)
                if self.state is not None:
                    self.state.refired_through = high
                    self._save_state()
        finally:
            await conn.close()
            if pool is not None:
                await pool.close()
            if redis_client is not None:
                redis_client.close()
        summary.refire_deliveries = counts
        if not self.args.dry_run and counts:
            summary.refire_enqueued = enqueued

    @staticmethod
    async def _all_queued(conn: asyncpg.Connection, delivery_ids: list[int]) -> bool:
        pending = await conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE id = ANY($1::bigint[]) AND status = 'pending'",
            delivery_ids)
        return not pending


# ---------------------------------------------------------------------- output


def render(summary: Summary, console: Console) -> None:
    would = "that would be " if summary.dry_run else ""
    console.print(f"[bold]replay of chain {summary.chain_id}, blocks {summary.from_block}.."
                  f"{summary.to_block}[/]{' (dry run: nothing written)' if summary.dry_run else ''}"
                  f"{' — interrupted' if summary.interrupted else ''}")
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("blocks replayed", f"{summary.blocks:,}")
    table.add_row(f"logs {would}added", f"{summary.logs_added:,}")
    table.add_row(f"events {would}invalidated", f"{summary.events_invalidated:,}")
    if summary.divergent_blocks:
        shown = ", ".join(map(str, summary.divergent_blocks[:10]))
        more = f" … (+{len(summary.divergent_blocks) - 10})" if len(summary.divergent_blocks) > 10 else ""
        table.add_row("divergent blocks (reorg)", shown + more)
    if summary.checkpoint is not None:
        table.add_row("checkpoint now", f"{summary.checkpoint:,}")
    if summary.settled_through is not None:
        table.add_row("replayed alongside the indexer", f"..{summary.settled_through:,}")
    if summary.left_to_indexer is not None:
        table.add_row("left to the live indexer",
                      f"{summary.left_to_indexer:,}..{summary.to_block:,}")
    if summary.refire:
        table.add_row("events re-evaluated (refire)", f"{summary.refire_events:,}")
    table.add_row("seconds", f"{summary.seconds:,.1f}")
    console.print(table)

    names = sorted(set(summary.new_log_deliveries) | set(summary.refire_deliveries))
    if names or summary.dry_run or summary.refire:
        per_trigger = Table(title=f"deliveries {would}created, per trigger",
                            title_justify="left")
        per_trigger.add_column("trigger")
        if summary.dry_run:
            per_trigger.add_column("from logs to add", justify="right")
        if summary.refire:
            per_trigger.add_column("refire (never delivered before)", justify="right")
        for name in names:
            cells = [name]
            if summary.dry_run:
                cells.append(f"{summary.new_log_deliveries.get(name, 0):,}")
            if summary.refire:
                cells.append(f"{summary.refire_deliveries.get(name, 0):,}")
            per_trigger.add_row(*cells)
        if not names:
            per_trigger.add_row("(none)", *[""] * (len(per_trigger.columns) - 1))
        console.print(per_trigger)
    if not summary.dry_run and summary.logs_added:
        console.print(f"{summary.logs_added:,} new logs were stored; a running processor "
                      "evaluates them like live ones.")
    if summary.refire_enqueued is False:
        console.print("[yellow]Redis was unreachable: the refired deliveries stay pending; a "
                      "running processor enqueues them.[/]")
    if summary.left_to_indexer is not None:
        console.print(f"blocks {summary.left_to_indexer:,}..{summary.to_block:,} are the live "
                      "indexer's (its reorg window, or above its checkpoint): it ingests and "
                      "re-checks them itself, so they were not replayed. Once they are more than "
                      "REORG_WINDOW blocks deep, replay them like any other range if needed.")
    if summary.interrupted:
        console.print("[yellow]interrupted: run the same command again to resume.[/]")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/replay.py",
        description="Re-ingest a block range from the chain (the indexer's code path); "
                    "optionally fire a new trigger's history (--refire).",
        epilog="Runs alongside a live indexer: nothing needs stopping. Blocks in the indexer's "
               "reorg window or above its checkpoint are left to it (the summary says which). "
               "Ctrl-C stops after the current range; the same command resumes. See "
               "docs/operations.md.")
    parser.add_argument("--chain-id", type=int, required=True,
                        help="the chain to replay; the node at RPC_URL must report it")
    parser.add_argument("--from-block", type=int, required=True)
    parser.add_argument("--to-block", type=int, default=None,
                        help="last block (default: head - CONFIRMATIONS, or the finalized/safe "
                             "block with CONFIRMATIONS=finalized|safe)")
    parser.add_argument("--refire", action="store_true",
                        help="then fire (action, event) pairs never delivered before")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would happen, write nothing")
    parser.add_argument("--rpc-url", default=None,
                        help="the node, or several separated by commas (default: RPC_URL)")
    parser.add_argument("--restart", action="store_true",
                        help="ignore what an interrupted earlier run saved")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = parser.parse_args(argv)
    if args.from_block < 0 or (args.to_block is not None and args.to_block < args.from_block):
        parser.error("need 0 <= --from-block <= --to-block")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    overrides: dict[str, object] = {"chain_id": args.chain_id}
    if args.rpc_url:
        overrides["rpc_url"] = args.rpc_url
    settings = load_settings(IngestSettings, **overrides)
    stderr = Console(stderr=True)
    command = ReplayCommand(args, settings, stderr)

    async def run() -> Summary:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            if command.stop.is_set():
                task.cancel()  # second Ctrl-C: abort now; the open transaction rolls back
                return
            command.stop.set()
            stderr.print("[yellow]stopping after the current range (Ctrl-C again to abort "
                          "now)…[/]")

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                   MofNCompleteColumn(), TextColumn("blocks"), BlocksPerSecondColumn(),
                   TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=False) as progress:
            # Inside the progress context, so log lines print above the bar, not through it.
            configure_logging(level="WARNING", fmt=settings.log_format, service="replay")
            return await command.run(progress)

    try:
        summary = asyncio.run(run())
    except (asyncio.CancelledError, KeyboardInterrupt):
        # A second Ctrl-C (or one after the loop ended): whatever range was open rolled back;
        # the saved position is that of the last committed range.
        stderr.print("aborted: run the same command to resume")
        return INTERRUPTED_EXIT
    except PermanentError as error:
        print(f"replay: {redact_urls_in(str(error))}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        render(summary, Console())
    return INTERRUPTED_EXIT if summary.interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())

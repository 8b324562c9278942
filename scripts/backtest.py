"""``python scripts/backtest.py --trigger ID|NAME --from-block B [--to-block E] [--json]``

Evaluate one trigger — enabled or not — against the chain's history and print what it would have
fired: the number of matches, matches per 1,000 blocks, the first matches with their decoded
arguments, and the exact webhook body the first one would get (built by the workers' own payload
builder; ``delivery_id`` is 0 here, a real delivery gets its row id). Conditions that were never
true and events that do not decode under the trigger's signature are reported too. Writes
nothing, anywhere.

Events come from the database where the indexer stored them, and from the node (``RPC_URL``)
elsewhere — before the stored history, above the checkpoint, or for a contract outside
``INGEST_ADDRESSES`` — with ingest's range adaptation and completeness proof
(``processor.backtest``, ``ingest.trigger_logs``). ``--to-block`` defaults to the checkpoint
(or the node's head − ``CONFIRMATIONS`` when nothing is stored).

A factory trigger first finds its children — the factory's creation logs from
``--factory-from-block`` (default 0; give the factory's deployment block to skip older history on
the node) to ``--to-block`` — then evaluates the children's logs, each only from its creation
block on. Nothing is registered.

Exit codes: 0 done, 1 one line (no such trigger, invalid trigger, empty range, a range above the
node's head, database or node unreachable), 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table  # noqa: E402

from core.db import connect  # noqa: E402
from core.errors import PermanentError  # noqa: E402
from core.factories import Factory  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.redact import redact_urls_in  # noqa: E402
from core.settings import IngestSettings, load_settings  # noqa: E402
from ingest.endpoints import EndpointPool  # noqa: E402
from ingest.factories import MAX_FILTER_ADDRESSES  # noqa: E402
from ingest.fetch import retry_rpc  # noqa: E402
from ingest.finality import ingest_target  # noqa: E402
from ingest.trigger_logs import trigger_logs  # noqa: E402
from processor.backtest import (  # noqa: E402
    BacktestError,
    BacktestReport,
    Evaluator,
    LoadedTrigger,
    Segment,
    children_from_db,
    children_from_node,
    load_trigger,
    plan_segments,
    stored_events,
    trigger_addresses,
)
from workers.payload import build_payload  # noqa: E402

INTERRUPTED_EXIT = 130
# A block this close above the head the node reports is waited for (a load-balanced provider's
# backends lag a few blocks; the fetcher retries until one serves it); further is an error.
NEAR_HEAD = 64


class Backtest:
    """One run of the command."""

    def __init__(self, args: argparse.Namespace, settings: IngestSettings) -> None:
        self.args = args
        self.settings = settings
        self.node: EndpointPool | None = None

    async def _node(self, chain_id: int) -> EndpointPool:
        if self.node is None:
            node = EndpointPool(self.settings.rpc_endpoints, timeout=self.settings.rpc_timeout,
                                max_response_bytes=self.settings.rpc_max_response_bytes)
            reported = await retry_rpc("eth_chainId", node.chain_id)
            if reported != chain_id:
                await node.close()
                raise BacktestError(f"the trigger is on chain {chain_id} but the node at "
                                    f"{node.answering()} reports chain {reported}")
            self.node = node
        return self.node

    async def run(self, progress: Progress) -> tuple[LoadedTrigger, BacktestReport]:
        conn = await connect(self.settings.database_url)
        try:
            loaded = await load_trigger(conn, self.args.trigger)
            trigger = loaded.compiled
            chain_id = trigger.chain_id
            to_block = self.args.to_block
            if to_block is None:
                to_block = await conn.fetchval(
                    "SELECT block_number FROM checkpoints WHERE chain_id = $1", chain_id)
            if to_block is None:
                node = await self._node(chain_id)
                _, to_block = await retry_rpc(
                    "eth_blockNumber", lambda: ingest_target(node, self.settings.confirmations))
            if to_block < self.args.from_block:
                raise BacktestError(f"empty range: --from-block {self.args.from_block} is above "
                                    f"block {to_block}")
            report = BacktestReport(trigger.id, trigger.name, loaded.enabled, chain_id,
                                    self.args.from_block, to_block)
            addresses: Sequence[str] = trigger_addresses(trigger)
            report.segments = await plan_segments(
                conn, chain_id=chain_id, first=self.args.from_block, last=to_block,
                addresses=addresses, ingest_addresses=self.settings.address_filter)
            factory = trigger.factory
            if factory is not None:
                report.children_segments = await plan_segments(
                    conn, chain_id=chain_id, first=min(self.args.factory_from_block, to_block),
                    last=to_block, addresses=(factory.address,),
                    ingest_addresses=self.settings.address_filter)
            from_node = [segment.last for segment in
                         (*report.segments, *report.children_segments) if segment.source == "node"]
            if from_node:
                head = await retry_rpc("eth_blockNumber", (await self._node(chain_id)).head)
                if max(from_node) > head + NEAR_HEAD:
                    raise BacktestError(f"block {max(from_node)} is above the node's head {head}: "
                                        "nothing to read there yet")
            children = None
            if factory is not None:
                children = await self._children(conn, factory, report, progress)
                report.children = len(children)
            evaluator = Evaluator(trigger, report, first_matches=self.args.show, children=children)
            task = progress.add_task("backtest", total=report.blocks)
            if children is not None and not children:
                progress.update(task, completed=report.blocks)
                return loaded, report  # no child: no candidate
            for segment in report.segments:
                if children is not None:
                    # The children's logs by address, or past the address-list limit by topic0
                    # alone, kept by the evaluator when the emitter is a child (stored or node).
                    addresses = sorted(children) if len(children) <= MAX_FILTER_ADDRESSES else []
                pages = (stored_events(conn, segment, chain_id=chain_id, topic0=trigger.topic0,
                                       addresses=addresses)
                         if segment.source == "stored" else
                         trigger_logs(await self._node(chain_id), chain_id=chain_id,
                                      first=segment.first, last=segment.last,
                                      addresses=addresses, topic0=trigger.topic0,
                                      max_block_range=self.settings.max_block_range))
                async for last, events in pages:
                    evaluator.feed(events)
                    progress.update(task, completed=last - report.from_block + 1)
            return loaded, report
        finally:
            await conn.close()
            if self.node is not None:
                await self.node.close()

    async def _children(self, conn: asyncpg.Connection, factory: Factory, report: BacktestReport,
                        progress: Progress) -> dict[str, int]:
        """The factory's children (→ creation block) up to the range's end; read, not stored."""
        segments: list[Segment] = report.children_segments
        first = segments[0].first
        task = progress.add_task("children", total=segments[-1].last - first + 1)
        children: dict[str, int] = {}
        for segment in segments:
            if segment.source == "stored":
                found = await children_from_db(conn, factory, segment)
            else:
                pages = trigger_logs(await self._node(report.chain_id), chain_id=report.chain_id,
                                     first=segment.first, last=segment.last,
                                     addresses=(factory.address,), topic0=factory.topic0,
                                     max_block_range=self.settings.max_block_range)
                found = await children_from_node(
                    factory, pages,
                    progress=lambda last: progress.update(task, completed=last - first + 1))
            for child, block in found.items():
                if block < children.get(child, block + 1):
                    children[child] = block
            progress.update(task, completed=segment.last - first + 1)
        return children


# ---------------------------------------------------------------------- output


def webhook_body(loaded: LoadedTrigger, event: dict[str, Any]) -> dict[str, Any]:
    """The body a delivery of ``event`` would carry (the workers' builder; delivery id 0)."""
    trigger = loaded.compiled
    body: dict[str, Any] = orjson.loads(build_payload(
        delivery_id=0, kind="matched", replay=False, trigger_id=trigger.id,
        trigger_name=trigger.name, event_signature=loaded.event_signature, event=event))
    return body


def as_json(loaded: LoadedTrigger, report: BacktestReport) -> dict[str, Any]:
    bodies = [webhook_body(loaded, event) for event in report.first_matches]
    factory = loaded.compiled.factory
    failure = report.first_decode_failure
    return {
        "trigger": {"id": report.trigger_id, "name": report.trigger_name,
                    "enabled": report.enabled, "chain_id": report.chain_id,
                    "address": loaded.compiled.address,
                    "factory": None if factory is None else {
                        "address": factory.address, "topic0": factory.topic0},
                    "signature": loaded.compiled.signature.canonical},
        "children": None if factory is None else {
            "count": report.children,
            "sources": [{"source": s.source, "from_block": s.first, "to_block": s.last}
                        for s in report.children_segments]},
        "from_block": report.from_block, "to_block": report.to_block, "blocks": report.blocks,
        "sources": [{"source": s.source, "from_block": s.first, "to_block": s.last}
                    for s in report.segments],
        "candidates": report.candidates,
        "matches": report.matches,
        "matches_per_1000_blocks": round(report.matches_per_1000_blocks, 3),
        "decode_failures": report.decode_failures,
        "first_decode_failure": None if failure is None else {
            "block_number": failure.block_number, "log_index": failure.log_index,
            "tx_hash": failure.tx_hash, "reason": failure.reason},
        "conditions": [{"path": leaf.path, "condition": leaf.text, "true": leaf.true}
                       for leaf in report.leaves],
        "never_true": [leaf.path for leaf in report.never_true],
        "first_matches": [body["event"] for body in bodies],
        "webhook_body": bodies[0] if bodies else None,
    }


def render(document: dict[str, Any], console: Console) -> None:
    trigger = document["trigger"]
    state = "enabled" if trigger["enabled"] else "disabled"
    console.print(f"[bold]backtest of trigger {trigger['name']!r} (id {trigger['id']}, {state})"
                  f" on chain {trigger['chain_id']}, blocks {document['from_block']:,}.."
                  f"{document['to_block']:,}[/] — nothing written")
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for source in document["sources"]:
        table.add_row(f"blocks from {'the database' if source['source'] == 'stored' else 'the node'}",
                      f"{source['from_block']:,}..{source['to_block']:,}")
    where = trigger["address"] or "any contract"
    children = document["children"]
    if children is not None:
        where = f"the children of factory {trigger['factory']['address']}"
        for source in children["sources"]:
            table.add_row("creation logs from "
                          f"{'the database' if source['source'] == 'stored' else 'the node'}",
                          f"{source['from_block']:,}..{source['to_block']:,}")
        table.add_row("children created by the range's end", f"{children['count']:,}")
    table.add_row(f"{trigger['signature']} events of {where}", f"{document['candidates']:,}")
    table.add_row("matches", f"{document['matches']:,}")
    table.add_row("matches per 1,000 blocks", f"{document['matches_per_1000_blocks']:,.3f}")
    table.add_row("decode failures", f"{document['decode_failures']:,}")
    console.print(table)
    if document["conditions"]:
        conditions = Table(title="conditions: events each leaf was true for", title_justify="left")
        conditions.add_column("path")
        conditions.add_column("condition")
        conditions.add_column("true for", justify="right")
        for leaf in document["conditions"]:
            style = "red" if leaf["true"] == 0 else ""
            conditions.add_row(leaf["path"], leaf["condition"], f"{leaf['true']:,}", style=style)
        console.print(conditions)
    for path in document["never_true"]:
        console.print(f"[yellow]{path} was never true over this range[/]")
    failure = document["first_decode_failure"]
    if failure is not None:
        console.print(f"[yellow]{document['decode_failures']:,} events of this contract and topic0 "
                      f"do not decode as {trigger['signature']} (first: block "
                      f"{failure['block_number']}, log {failure['log_index']}: {failure['reason']})"
                      " — check which parameters are indexed[/]")
    if document["first_matches"]:
        console.print(f"[bold]first {len(document['first_matches'])} matches[/]")
        for event in document["first_matches"]:
            console.print(f"  block {event['block_number']:,} log {event['log_index']} tx "
                          f"{event['tx_hash']}: {orjson.dumps(event['args']).decode()}",
                          soft_wrap=True)
        console.print("[bold]webhook body of the first match[/] (delivery_id is the delivery "
                      "row's id when it is really sent):")
        console.print_json(orjson.dumps(document["webhook_body"]).decode())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/backtest.py",
        description="Evaluate one trigger (enabled or not) against history; writes nothing.",
        epilog="See docs/operations.md, Backtest.")
    parser.add_argument("--trigger", required=True, help="the trigger's id or name")
    parser.add_argument("--from-block", type=int, required=True)
    parser.add_argument("--to-block", type=int, default=None,
                        help="last block (default: the chain's checkpoint)")
    parser.add_argument("--factory-from-block", type=int, default=0,
                        help="a factory trigger: first block to look for its creation logs "
                             "(default 0; the factory's deployment block is enough)")
    parser.add_argument("--show", type=int, default=5, help="first matches to print (default 5)")
    parser.add_argument("--rpc-url", default=None,
                        help="the node, or several separated by commas (default: RPC_URL)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)
    problem = None
    if args.from_block < 0 or (args.to_block is not None and args.to_block < args.from_block):
        problem = "need 0 <= --from-block <= --to-block"
    elif args.factory_from_block < 0:
        problem = "--factory-from-block must be >= 0"
    elif args.show < 0:
        problem = "--show must be >= 0"
    if problem is not None:  # one line, like every other refusal of this command
        print(f"backtest: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    overrides: dict[str, object] = {"chain_id": None}
    if args.rpc_url:
        overrides["rpc_url"] = args.rpc_url
    settings = load_settings(IngestSettings, **overrides)
    stderr = Console(stderr=True)
    command = Backtest(args, settings)

    async def run() -> tuple[LoadedTrigger, BacktestReport]:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                   MofNCompleteColumn(), TextColumn("blocks"), TextColumn("ETA"),
                   TimeRemainingColumn())
        with Progress(*columns, console=stderr, transient=True,
                      disable=not stderr.is_terminal) as progress:
            configure_logging(level="WARNING", fmt=settings.log_format, service="backtest")
            return await command.run(progress)

    try:
        loaded, report = asyncio.run(run())
    except KeyboardInterrupt:
        print("backtest: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except PermanentError as error:
        print(f"backtest: {redact_urls_in(str(error))}", file=sys.stderr)
        return 1
    document = as_json(loaded, report)
    if args.json:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        render(document, Console())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

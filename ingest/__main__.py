"""``python -m ingest``: the indexer for one chain (the commands in docs/reference.md).

Exit codes: 0 after SIGTERM/SIGINT (the current transaction commits or rolls back first);
1 with one line for a permanent failure (``CHAIN_ID`` mismatch, database unreachable at start,
reorg deeper than ``REORG_WINDOW``); 2 with one line for invalid settings.
"""

from __future__ import annotations

import asyncio
import gc

from core.cli import run_service
from core.logging import configure_logging
from core.metrics import serve_metrics
from core.settings import IngestSettings, load_settings
from ingest.endpoints import EndpointPool
from ingest.metrics import IngestMetrics
from ingest.poller import Indexer

# Young objects between two automatic collections (CPython's default: 700). Parsing a range
# allocates a few containers per log (the reply's dicts and lists, the parsed tuples): at 700,
# a 10,000-log range triggers hundreds of collections, and the older generations' passes walk
# every parsed log still alive. Measured on eth_getLogs replies: parse + proof ~40% faster
# (4.8 -> 3.0 µs a log). Nothing ingest allocates forms cycles worth collecting sooner; the
# garbage a collection finds is bounded by this count (a few MiB at most).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cycles rarely, and never re-walk what start-up imported (``gc.freeze``)."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _main(stop: asyncio.Event) -> None:
    settings = load_settings(IngestSettings)
    tune_gc()
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="ingest")
    metrics = IngestMetrics()
    serve_metrics(settings.metrics_port)
    async with EndpointPool(settings.rpc_endpoints, timeout=settings.rpc_timeout,
                            metrics=metrics,
                            max_response_bytes=settings.rpc_max_response_bytes) as source:
        await Indexer(settings, source, metrics=metrics).run(stop)


def main() -> None:
    run_service("ingest", _main)


if __name__ == "__main__":
    main()

"""``python -m ingest``: the indexer for one chain (SPEC §2).

Exit codes: 0 after SIGTERM/SIGINT (the current transaction commits or rolls back first);
1 with one line for a permanent failure (``CHAIN_ID`` mismatch, database unreachable at start,
reorg deeper than ``REORG_WINDOW``); 2 with one line for invalid settings.
"""

from __future__ import annotations

import asyncio

from core.cli import run_service
from core.logging import configure_logging
from core.metrics import serve_metrics
from core.settings import IngestSettings, load_settings
from ingest.endpoints import EndpointPool
from ingest.metrics import IngestMetrics
from ingest.poller import Indexer


async def _main(stop: asyncio.Event) -> None:
    settings = load_settings(IngestSettings)
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

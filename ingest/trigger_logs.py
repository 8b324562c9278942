"""One trigger's logs read straight from the node, proven complete: the log source of
``scripts/backtest.py`` for blocks the indexer has not stored.

Ranges come from ingest's own :class:`ingest.fetch.RangeFetcher` with the trigger's addresses
and ``topic0`` as its filter (``eth_getLogs`` with ``address`` and ``topics``): adaptive ranges
(``MAX_BLOCK_RANGE``, shrunk on limit errors and timeouts, by-hash fallback), retries with
backoff, and the filtered completeness proof (``ingest.completeness``) — every log in its
header's ``logsBloom``, and every block whose bloom admits ``topic0`` and one of the addresses
but returned no log confirmed by ``eth_getLogs`` by ``blockHash`` with the same filter. With no
address (a trigger on any contract, or a factory family too large for an address list) the
filter is ``topic0`` alone and the proof the same on ``topic0``. Several addresses (a family of
contracts) are one filter, one request per range; ``topic0`` is checked again here, so a node
answering more than asked cannot add a log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from ingest.fetch import RangeFetcher
from ingest.metrics import IngestMetrics
from ingest.ranges import RangeSizer
from ingest.rpc import ChainSource
from ingest.store import block_time


async def trigger_logs(source: ChainSource, *, chain_id: int, first: int, last: int,
                       addresses: Sequence[str], topic0: str, max_block_range: int
                       ) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """``(last block of the range, the logs of ``addresses`` with ``topic0`` in it)``, range by
    range over ``first..last``; each log as a row with the ``events`` columns (``id`` None).
    RPC faults are retried (only cancellation ends it early)."""
    fetcher = RangeFetcher(source, RangeSizer(max_block_range), addresses=addresses,
                           topic0=topic0, metrics=IngestMetrics(registry=None), chain_id=chain_id)
    while first <= last:
        batch = await fetcher.fetch(first, last)
        times: dict[int, datetime] = {h.number: block_time(h) for h in batch.headers}
        yield batch.last, [
            {"id": None, "chain_id": chain_id, "block_number": entry.block_number,
             "block_hash": entry.block_hash, "block_time": times[entry.block_number],
             "tx_hash": entry.tx_hash, "tx_index": entry.tx_index, "log_index": entry.log_index,
             "address": entry.address, "topic0": entry.topic0, "topic1": entry.topic1,
             "topic2": entry.topic2, "topic3": entry.topic3, "data": entry.data}
            for entry in batch.logs if entry.topic0 == topic0]
        first = batch.last + 1

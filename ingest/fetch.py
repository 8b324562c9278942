"""Fetch one proven-complete range of headers and logs, riding out every RPC fault.

:meth:`RangeFetcher.fetch` returns a :class:`Batch` that ``ingest.completeness`` has proven:
contiguous headers, every log carrying its header's ``blockHash``, and the logs of each block
complete against its header's ``logsBloom`` (with ``INGEST_ADDRESSES``: blocks whose bloom admits
a filtered address but returned no log confirmed by ``eth_getLogs`` by ``blockHash``). Headers and
logs travel as separate concurrent requests and may be answered by different nodes; the proof
does not care which. When only a prefix of the range can be proven (a node behind answered part
of it), the prefix is returned and the rest is fetched again next time; when not even the first
block can, the range is fetched again after a backoff — never stored.

Faults are retried forever with backoff and jitter (``Retry-After`` honoured); limit errors and
timeouts shrink the range; a single block that still fails is fetched by block hash. Only
cancellation ends a fetch early. Every refusal is counted in
``blockhook_ingest_rpc_errors_total{kind}`` (``incomplete`` for a provably incomplete answer,
``behind`` for a block the node has not seen yet).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from core.backoff import backoff_delay
from core.errors import RpcBadResponse, RpcRangeTooLarge, RpcUnavailable
from ingest.completeness import (
    NotSeenYet,
    RangeCheck,
    check_range,
    confirm_blocks,
    found_missing_logs,
)
from ingest.metrics import IngestMetrics, error_kind
from ingest.ranges import RangeSizer
from ingest.rpc import ChainSource, Header, Log, RpcTimeout

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Batch:
    """A verified contiguous range: ``headers[0].number .. headers[-1].number``."""

    headers: list[Header]
    logs: list[Log]

    @property
    def first(self) -> int:
        return self.headers[0].number

    @property
    def last(self) -> int:
        return self.headers[-1].number


NOT_PROVABLE_RETRY_CAP = 2.0
"""Seconds: the longest wait before fetching again a range a node behind could not prove."""


class RangeFetcher:
    """Fetches ranges for one chain through a ``ChainSource`` with an adaptive ``RangeSizer``."""

    def __init__(self, source: ChainSource, sizer: RangeSizer, *, addresses: Sequence[str] = (),
                 topic0: str | None = None, metrics: IngestMetrics | None = None,
                 chain_id: int = 0) -> None:
        self.source = source
        self.sizer = sizer
        self.addresses = list(addresses)
        # One event only (``scripts/backtest.py``); ingest asks for every event of its addresses.
        self.topic0 = topic0
        self.metrics = metrics
        self.chain_id = chain_id

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.rpc_errors.labels(kind=kind).inc()

    async def fetch(self, first: int, target: int) -> Batch:
        """The range starting at ``first`` (at most up to ``target``), proven complete; possibly
        shorter than asked when only a prefix could be proven."""
        attempt = 0
        by_hash = False
        while True:
            last = first if by_hash else self.sizer.span(first, target)[1]
            if self.metrics is not None:
                self.metrics.range_blocks.set(last - first + 1)
            try:
                check = await self._fetch_once(first, last, by_hash=by_hash)
            except (RpcRangeTooLarge, RpcTimeout) as error:
                self._count(error_kind(error))
                if first == last:
                    # One block is already the smallest range: ask by block hash instead, and
                    # back off if even that fails.
                    if by_hash:
                        attempt += 1
                        await asyncio.sleep(backoff_delay(attempt))
                    by_hash = True
                else:
                    self.sizer.shrink(first, last, getattr(error, "suggested", None))
                    if isinstance(error, RpcTimeout):
                        await asyncio.sleep(backoff_delay(1))
                log.info("rpc range refused", chain_id=self.chain_id, first=first, last=last,
                         next_size=self.sizer.size, by_hash=by_hash, reason=str(error))
                continue
            except (RpcUnavailable, RpcBadResponse) as error:
                kind = error_kind(error)
                self._count(kind)
                attempt += 1
                delay = backoff_delay(attempt, retry_after=getattr(error, "retry_after", None))
                report = log.info if kind == "behind" else log.warning
                report("rpc fault, retrying", chain_id=self.chain_id, first=first, last=last,
                       kind=kind, attempt=attempt, delay=round(delay, 3), reason=str(error))
                await asyncio.sleep(delay)
                continue
            if check.problem is not None:
                self._count(error_kind(check.problem))
            if not check.headers:
                # A node behind answered: it catches up within a block or two, so the wait stays
                # short (a fault's backoff would grow to half a minute at a quiet chain's tip).
                attempt += 1
                delay = backoff_delay(attempt, cap=NOT_PROVABLE_RETRY_CAP)
                log.info("range not provable yet, fetching again", chain_id=self.chain_id,
                         first=first, last=last, kind=error_kind(check.problem or RpcUnavailable("")),
                         attempt=attempt, delay=round(delay, 3), reason=str(check.problem))
                await asyncio.sleep(delay)
                continue
            if check.problem is not None:
                log.debug("range proven up to a prefix", chain_id=self.chain_id, first=first,
                          last=last, proven=check.headers[-1].number, reason=str(check.problem))
            self.sizer.succeeded(len(check.headers), len(check.logs))
            return Batch(check.headers, check.logs)

    async def _fetch_once(self, first: int, last: int, *, by_hash: bool) -> RangeCheck:
        numbers = range(first, last + 1)
        if by_hash:
            headers: list[Header | None] = await self.source.headers(numbers)
            if headers[0] is None:
                raise NotSeenYet(f"block {first} is not available on the node yet")
            logs = await (self.source.logs_by_hash(headers[0].hash, self.addresses)
                          if self.topic0 is None else
                          self.source.logs_by_hash(headers[0].hash, self.addresses,
                                                   topic0=self.topic0))
        else:
            headers, logs = await self._headers_and_logs(first, last)
            # Parsing a dense range takes tens of ms; let the overlapped write of the previous
            # range take its next step before the proof takes as many again.
            await asyncio.sleep(0)
        check = check_range(first, headers, logs, self.addresses, self.topic0)
        if check.to_confirm:
            hashes = [h.hash for h in check.to_confirm]
            answers = await (self.source.logs_by_hashes(hashes, self.addresses)
                             if self.topic0 is None else
                             self.source.logs_by_hashes(hashes, self.addresses, topic0=self.topic0))
            if found_missing_logs(answers):
                self._count("incomplete")
            check = confirm_blocks(check, answers)
        return check

    async def _headers_and_logs(self, first: int, last: int) -> tuple[list[Header | None], list[Log]]:
        # Two concurrent requests, possibly answered by different nodes: check_range() proves
        # what they say together.
        headers_task = asyncio.ensure_future(self.source.headers(range(first, last + 1)))
        try:
            logs = await (self.source.logs(first, last, self.addresses) if self.topic0 is None
                          else self.source.logs(first, last, self.addresses, topic0=self.topic0))
            headers = await headers_task
        finally:
            if not headers_task.done():
                headers_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await headers_task
            elif not headers_task.cancelled():
                headers_task.exception()  # retrieved: no "never retrieved" noise
        return headers, logs


async def retry_rpc(what: str, call: Callable[[], Awaitable[T]], *, chain_id: int = 0,
                    metrics: IngestMetrics | None = None) -> T:
    """Run ``call()`` until it succeeds, backing off (with jitter, honouring ``Retry-After``)
    on transient RPC errors. Only cancellation ends it early."""
    attempt = 0
    while True:
        try:
            return await call()
        except (RpcUnavailable, RpcBadResponse, RpcRangeTooLarge) as error:
            attempt += 1
            if metrics is not None:
                metrics.rpc_errors.labels(kind=error_kind(error)).inc()
            delay = backoff_delay(attempt, retry_after=getattr(error, "retry_after", None))
            log.warning("rpc fault, retrying", chain_id=chain_id, call=what, attempt=attempt,
                        delay=round(delay, 3), reason=str(error))
            await asyncio.sleep(delay)

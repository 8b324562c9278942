"""Fetch one verified range of headers and logs, riding out every RPC fault.

:meth:`RangeFetcher.fetch` returns a :class:`Batch` whose headers are contiguous (each
``parentHash`` is the previous header's hash) and whose logs all carry the ``blockHash`` of the
header fetched for their block. Anything else means the node moved under us or answered
nonsense: the range is fetched again, never returned. Faults are retried forever with backoff
and jitter (``Retry-After`` honoured); limit errors and timeouts shrink the range; a single block
that still fails is fetched by block hash. Only cancellation ends a fetch early.
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
from ingest.metrics import IngestMetrics
from ingest.ranges import RangeSizer
from ingest.rpc import ChainSource, Header, Log, RpcTimeout

log = structlog.get_logger(__name__)

T = TypeVar("T")


class HashMismatch(RpcBadResponse):
    """A log's ``blockHash`` (or a header's ``parentHash``) contradicts the headers fetched."""


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


def verify(first: int, headers: Sequence[Header | None], logs: Sequence[Log]) -> list[Header]:
    """Check a fetched range; raise ``HashMismatch``/``RpcUnavailable`` if it cannot be stored."""
    checked: list[Header] = []
    for offset, header in enumerate(headers):
        if header is None:
            # A load-balanced provider may serve a head its backend does not have yet.
            raise RpcUnavailable(f"block {first + offset} is not available on the node yet")
        if checked and header.parent_hash != checked[-1].hash:
            raise HashMismatch(f"block {header.number}'s parentHash does not match block "
                               f"{checked[-1].number}: the node moved under us")
        checked.append(header)
    hashes = {h.number: h.hash for h in checked}
    for entry in logs:
        if hashes.get(entry.block_number) != entry.block_hash:
            raise HashMismatch(f"log {entry.block_number}/{entry.log_index} has blockHash "
                               f"{entry.block_hash}, header says {hashes.get(entry.block_number)}")
    return checked


def error_kind(error: Exception) -> str:
    """The ``blockhook_ingest_rpc_errors_total{kind}`` label of an RPC error."""
    if isinstance(error, HashMismatch):
        return "hash_mismatch"
    if isinstance(error, RpcTimeout):
        return "timeout"
    if isinstance(error, RpcRangeTooLarge):
        return "range_too_large"
    if isinstance(error, RpcBadResponse):
        return "bad_response"
    if isinstance(error, RpcUnavailable) and (error.retry_after is not None or "429" in str(error)):
        return "rate_limited"
    return "unavailable"


class RangeFetcher:
    """Fetches ranges for one chain through a ``ChainSource`` with an adaptive ``RangeSizer``."""

    def __init__(self, source: ChainSource, sizer: RangeSizer, *, addresses: Sequence[str] = (),
                 metrics: IngestMetrics | None = None, chain_id: int = 0) -> None:
        self.source = source
        self.sizer = sizer
        self.addresses = list(addresses)
        self.metrics = metrics
        self.chain_id = chain_id

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.rpc_errors.labels(kind=kind).inc()

    async def fetch(self, first: int, target: int) -> Batch:
        """The range starting at ``first`` (at most up to ``target``), verified."""
        attempt = 0
        by_hash = False
        while True:
            last = first if by_hash else self.sizer.span(first, target)[1]
            if self.metrics is not None:
                self.metrics.range_blocks.set(last - first + 1)
            try:
                batch = await self._fetch_once(first, last, by_hash=by_hash)
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
                log.warning("rpc fault, retrying", chain_id=self.chain_id, first=first, last=last,
                            kind=kind, attempt=attempt, delay=round(delay, 3), reason=str(error))
                await asyncio.sleep(delay)
                continue
            self.sizer.succeeded(len(batch.headers), len(batch.logs))
            return batch

    async def _fetch_once(self, first: int, last: int, *, by_hash: bool) -> Batch:
        numbers = range(first, last + 1)
        if by_hash:
            headers = await self.source.headers(numbers)
            if headers[0] is None:
                raise RpcUnavailable(f"block {first} is not available on the node yet")
            logs = await self.source.logs_by_hash(headers[0].hash, self.addresses)
        else:
            # Headers and logs travel concurrently; verify() ties them together afterwards.
            headers_task = asyncio.ensure_future(self.source.headers(numbers))
            try:
                logs = await self.source.logs(first, last, self.addresses)
                headers = await headers_task
            finally:
                if not headers_task.done():
                    headers_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await headers_task
                elif not headers_task.cancelled():
                    headers_task.exception()  # retrieved: no "never retrieved" noise
        return Batch(verify(first, headers, logs), logs)


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

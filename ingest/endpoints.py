"""Several JSON-RPC endpoints (``RPC_URL=a,b,c``) behind one ``ChainSource``: health, failover,
and the tip only from endpoints that have it.

:class:`EndpointPool` keeps one :class:`ingest.rpc.JsonRpcClient` per endpoint and, per endpoint,
what it has seen: chain id, head, latency and failure rate (moving averages), consecutive
failures. Routing:

- every ``head()`` asks all endpoints at once (answers arriving after the first by more than a
  short grace are still recorded, not waited for) and returns the best head;
- a call touching block ``n`` goes to endpoints whose head is at least ``n``, best health score
  first; one more than :data:`BEHIND_BLOCKS` behind the best head is ``behind`` and scores low.
  An endpoint that answers ``null`` for a block at or below the head it claimed is treated as
  having only the blocks below it;
- a fault (connection, 5xx, 429, timeout, garbage) fails over to the next endpoint within the
  same call and puts the failing one in a cooldown growing with its consecutive failures (1 s
  doubling to 60 s; a ``Retry-After`` wins); only when every endpoint fails does the call raise
  (the caller backs off and retries). An endpoint serving another chain is never used again.

The health score (0..1) is ``(1 − failure rate) / (1 + latency / 0.5 s)``, divided by ``1 +`` the
blocks it is behind beyond :data:`BEHIND_BLOCKS`; 0 while ``down`` (cooling down, or three
failures in a row without a success) or on the wrong chain.

Nothing about correctness depends on which endpoint answered: ranges are proven complete against
their headers (``ingest.completeness``) and reorgs are confirmed (``ingest.reorg``) whoever
served them. Endpoints are known by their redacted URL (``core.redact``) in logs, metrics and
``status``: API keys in a URL never leave this module.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from core.backoff import backoff_delay
from core.errors import ConfigError, RpcBadResponse, RpcRangeTooLarge, RpcUnavailable
from core.redact import redact_url, redact_urls_in
from ingest.metrics import IngestMetrics, error_kind
from ingest.rpc import DEFAULT_MAX_RESPONSE_BYTES, BlockNotSeen, Header, JsonRpcClient, Log

log = structlog.get_logger(__name__)

T = TypeVar("T")

BEHIND_BLOCKS = 3  # more than this behind the best head: "behind"
LATENCY_SCALE = 0.5  # seconds of latency that halve the score
SMOOTHING = 0.2  # weight of the newest sample in the moving averages
HEAD_GRACE = 0.25  # seconds to wait for other endpoints' heads after the first answer
COOLDOWN_BASE, COOLDOWN_CAP = 1.0, 60.0
DOWN_AFTER_FAILURES = 3  # consecutive failures that make an endpoint "down" even between tries
# Faults that say "this endpoint is unwell" (cooldown); "behind" and range limits do not.
COOLDOWN_KINDS = frozenset({"unavailable", "timeout", "rate_limited", "bad_response"})


@dataclass
class Endpoint:
    """One endpoint of the pool and what it has shown so far."""

    position: int
    label: str
    client: JsonRpcClient
    chain_id: int | None = None
    wrong_chain: bool = False
    head: int | None = None
    latency: float | None = None
    failure_rate: float = 0.0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    requests: int = 0
    errors: int = 0
    last_error: str | None = None
    reported_state: str = "unverified"

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until

    def lag(self, best_head: int | None) -> int | None:
        if best_head is None or self.head is None:
            return None
        return max(0, best_head - self.head)

    def down(self, now: float) -> bool:
        """Cooling down after a failure, or failing again and again without a success."""
        return self.cooling(now) or self.consecutive_failures >= DOWN_AFTER_FAILURES

    def score(self, best_head: int | None, now: float) -> float:
        if self.wrong_chain or self.down(now):
            return 0.0
        lag = self.lag(best_head) or 0
        lag_factor = 1.0 if lag <= BEHIND_BLOCKS else 1.0 / (1 + lag - BEHIND_BLOCKS)
        latency = self.latency or 0.0
        return round((1.0 - self.failure_rate) / (1.0 + latency / LATENCY_SCALE) * lag_factor, 3)

    def state(self, best_head: int | None, now: float) -> str:
        """``ok``, ``degraded`` (failing often), ``behind``, ``down`` (cooling down after
        failures), ``wrong_chain`` or ``unverified`` (never answered yet)."""
        if self.wrong_chain:
            return "wrong_chain"
        if self.down(now):
            return "down"
        if self.chain_id is None:
            return "unverified"
        if (self.lag(best_head) or 0) > BEHIND_BLOCKS:
            return "behind"
        if self.failure_rate > 0.2:
            return "degraded"
        return "ok"


@dataclass(frozen=True)
class EndpointStatus:
    """What ``status.py`` shows of an endpoint (persisted by the indexer in ``rpc_endpoints``)."""

    position: int
    endpoint: str
    state: str
    head: int | None
    lag_blocks: int | None
    health_score: float
    latency_ms: float | None
    requests: int
    errors: int
    last_error: str | None


@dataclass
class EndpointPool:
    """A ``ChainSource`` over several endpoints; use as ``async with``."""

    urls: Sequence[str]
    timeout: float = 20.0
    metrics: IngestMetrics | None = None
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    endpoints: list[Endpoint] = field(init=False)
    expected_chain_id: int | None = None
    best_head: int | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("RPC_URL lists no endpoint")
        labels = [redact_url(url) for url in self.urls]
        self.endpoints = [
            Endpoint(position, label if labels.count(label) == 1 else f"{label} #{position + 1}",
                     JsonRpcClient(url, timeout=self.timeout,
                                   max_response_bytes=self.max_response_bytes))
            for position, (url, label) in enumerate(zip(self.urls, labels, strict=True))]
        # eth_blockNumber calls still running after head() returned, by endpoint position: an
        # endpoint that hangs gets no second one until the first ends (or times out).
        self._stragglers: dict[int, asyncio.Task[Any]] = {}

    @property
    def label(self) -> str:
        """The endpoints, redacted, for messages."""
        return ", ".join(e.label for e in self.endpoints)

    async def __aenter__(self) -> EndpointPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._stragglers.values():
            task.cancel()
        for task in list(self._stragglers.values()):
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled or failed: recorded already
                pass
        for endpoint in self.endpoints:
            await endpoint.client.close()

    # ------------------------------------------------------------------ ChainSource

    async def chain_id(self) -> int:
        """The chain every answering endpoint serves. Raises ``ConfigError`` when two of them
        disagree, the first RPC error when none answers (the caller retries)."""
        answers = await asyncio.gather(*(self._verify(e) for e in self.endpoints
                                         if not e.wrong_chain), return_exceptions=True)
        chains = {e.label: e.chain_id for e in self.endpoints if e.chain_id is not None}
        if len(set(chains.values())) > 1:
            listed = ", ".join(f"{label} → {chain}" for label, chain in chains.items())
            raise ConfigError(f"the RPC_URL endpoints serve different chains: {listed}")
        if not chains:
            raise next(a for a in answers if isinstance(a, BaseException))
        self.expected_chain_id = next(iter(chains.values()))
        return self.expected_chain_id

    def answering(self) -> str:
        """The endpoints that reported the chain id, redacted (for ``CHAIN_ID`` mismatches)."""
        return ", ".join(e.label for e in self.endpoints if e.chain_id is not None) or self.label

    async def head(self) -> int:
        now = time.monotonic()
        usable = [e for e in self.endpoints if not e.wrong_chain]
        asked = [e for e in usable if not e.cooling(now)] or usable
        asked = [e for e in asked if e.position not in self._stragglers] or asked
        tasks = {asyncio.ensure_future(self._head_of(e)): e for e in asked}
        pending = set(tasks)
        heads: list[int] = []
        errors: list[BaseException] = []
        try:
            while pending and not heads:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        heads.append(task.result())
                    else:
                        errors.append(task.exception())  # type: ignore[arg-type]
            if pending:
                done, pending = await asyncio.wait(pending, timeout=HEAD_GRACE)
                heads += [t.result() for t in done if t.exception() is None]
        except BaseException:
            for task in pending:
                task.cancel()
            raise
        for task in pending:  # slow endpoints: their answer is recorded when it comes
            position = tasks[task].position
            self._stragglers[position] = task
            task.add_done_callback(functools.partial(self._forget, position))
        if not heads:
            raise errors[0]
        self.best_head = max(heads)
        self._publish(time.monotonic())
        return self.best_head

    async def tagged_header(self, tag: str) -> Header | None:
        return await self._call("eth_getBlockByNumber", None, lambda c: c.tagged_header(tag))

    async def headers(self, numbers: Sequence[int]) -> list[Header | None]:
        if not numbers:
            return []
        endpoint, headers = await self._routed("eth_getBlockByNumber", max(numbers),
                                               lambda c: c.headers(numbers))
        self._learn_head(endpoint, numbers, headers)
        return headers

    async def logs(self, first: int, last: int, addresses: Sequence[str] = (), *,
                   topic0: str | None = None) -> list[Log]:
        return await self._call("eth_getLogs", last,
                                lambda c: c.logs(first, last, addresses, topic0=topic0))

    async def logs_by_hash(self, block_hash: str, addresses: Sequence[str] = (), *,
                           topic0: str | None = None) -> list[Log]:
        return await self._call("eth_getLogs", None,
                                lambda c: c.logs_by_hash(block_hash, addresses, topic0=topic0))

    async def logs_by_hashes(self, block_hashes: Sequence[str], addresses: Sequence[str] = (), *,
                             topic0: str | None = None) -> list[list[Log] | Exception]:
        """Per block its logs or its error; a block one endpoint has not seen ("unknown
        block") is asked of the next endpoint."""
        answers: list[list[Log] | Exception] = [RpcUnavailable("not asked")] * len(block_hashes)
        missing = list(range(len(block_hashes)))
        for endpoint in self._candidates(None):
            hashes = [block_hashes[i] for i in missing]

            def ask(client: JsonRpcClient, asked: list[str] = hashes) -> Awaitable[list[list[Log] | Exception]]:
                return client.logs_by_hashes(asked, addresses, topic0=topic0)

            try:
                part = await self._attempt(endpoint, "eth_getLogs", ask)
            except (RpcUnavailable, RpcBadResponse) as error:
                for i in missing:
                    answers[i] = error
                continue
            for i, answer in zip(missing, part, strict=True):
                answers[i] = answer
            missing = [i for i in missing if isinstance(answers[i], BlockNotSeen)]
            if missing:
                self._record_error(endpoint, "behind", f"{len(missing)} blocks unknown")
            if not missing:
                break
        return answers

    # ------------------------------------------------------------------ status

    def statuses(self) -> list[EndpointStatus]:
        now = time.monotonic()
        return [EndpointStatus(
            position=e.position, endpoint=e.label, state=e.state(self.best_head, now), head=e.head,
            lag_blocks=e.lag(self.best_head), health_score=e.score(self.best_head, now),
            latency_ms=None if e.latency is None else round(e.latency * 1000, 1),
            requests=e.requests, errors=e.errors, last_error=e.last_error)
            for e in self.endpoints]

    # ------------------------------------------------------------------ routing

    def _candidates(self, need: int | None) -> list[Endpoint]:
        """Endpoints to try, in order: not cooling down (all of them when every one is), those
        having block ``need`` by health score, then the rest by head, most advanced first."""
        now = time.monotonic()
        usable = [e for e in self.endpoints if not e.wrong_chain]
        ready = [e for e in usable if not e.cooling(now)] or sorted(usable, key=lambda e: e.cooldown_until)
        best = self.best_head

        def by_score(e: Endpoint) -> tuple[float, int]:
            return (-e.score(best, now), e.position)

        if need is None:
            floor = None if best is None else best - BEHIND_BLOCKS
            need_floor = floor if floor is not None else -1
            having = [e for e in ready if e.head is None or e.head >= need_floor]
        else:
            having = [e for e in ready if e.head is not None and e.head >= need]
        rest = [e for e in ready if e not in having]
        unknown = [e for e in rest if e.head is None]
        behind = sorted((e for e in rest if e.head is not None), key=lambda e: -(e.head or 0))
        return sorted(having, key=by_score) + unknown + behind

    async def _call(self, method: str, need: int | None,
                    call: Callable[[JsonRpcClient], Awaitable[T]]) -> T:
        return (await self._routed(method, need, call))[1]

    async def _routed(self, method: str, need: int | None,
                      call: Callable[[JsonRpcClient], Awaitable[T]]) -> tuple[Endpoint, T]:
        """``call`` on the first candidate that answers; faults fail over to the next one."""
        last_error: Exception | None = None
        candidates = self._candidates(need)
        for index, endpoint in enumerate(candidates):
            try:
                return endpoint, await self._attempt(endpoint, method, call)
            except RpcRangeTooLarge:
                raise  # about the request, not the endpoint: the fetcher shrinks the range
            except (RpcUnavailable, RpcBadResponse) as error:
                last_error = error
                if index + 1 < len(candidates):
                    log.warning("rpc endpoint failed, trying the next one", endpoint=endpoint.label,
                                method=method, kind=error_kind(error),
                                next_endpoint=candidates[index + 1].label,
                                reason=redact_urls_in(str(error)))
        raise last_error or RpcUnavailable("no usable RPC endpoint (all serve another chain)")

    async def _attempt(self, endpoint: Endpoint, method: str,
                       call: Callable[[JsonRpcClient], Awaitable[T]]) -> T:
        """One call on one endpoint, measured and recorded (chain id verified first)."""
        if endpoint.chain_id is None:
            await self._verify(endpoint)
        started = time.monotonic()
        endpoint.requests += 1
        if self.metrics is not None:
            self.metrics.rpc_requests.labels(endpoint=endpoint.label, method=method).inc()
        try:
            result = await call(endpoint.client)
        except RpcRangeTooLarge as error:
            self._record_error(endpoint, error_kind(error), str(error))
            raise
        except (RpcUnavailable, RpcBadResponse) as error:
            self._record_failure(endpoint, error)
            raise
        self._record_success(endpoint, time.monotonic() - started)
        return result

    async def _verify(self, endpoint: Endpoint) -> int:
        """Ask the endpoint's chain id; one serving another chain is disabled for good."""
        started = time.monotonic()
        endpoint.requests += 1
        if self.metrics is not None:
            self.metrics.rpc_requests.labels(endpoint=endpoint.label, method="eth_chainId").inc()
        try:
            chain = await endpoint.client.chain_id()
        except (RpcUnavailable, RpcBadResponse) as error:
            self._record_failure(endpoint, error)
            raise
        self._record_success(endpoint, time.monotonic() - started)
        if self.expected_chain_id is not None and chain != self.expected_chain_id:
            endpoint.wrong_chain = True
            self._record_error(endpoint, "wrong_chain", f"serves chain {chain}, not "
                                                        f"{self.expected_chain_id}")
            log.error("rpc endpoint serves another chain; not used", endpoint=endpoint.label,
                      endpoint_chain=chain, chain_id=self.expected_chain_id)
            raise RpcUnavailable(f"{endpoint.label} serves chain {chain}")
        endpoint.chain_id = chain
        return chain

    async def _head_of(self, endpoint: Endpoint) -> int:
        head = await self._attempt(endpoint, "eth_blockNumber", lambda c: c.head())
        endpoint.head = head
        return head

    def _forget(self, position: int, task: asyncio.Task[Any]) -> None:
        if self._stragglers.get(position) is task:
            del self._stragglers[position]
        if not task.cancelled():
            task.exception()  # recorded by _attempt; retrieved here so asyncio stays quiet

    def _learn_head(self, endpoint: Endpoint, numbers: Sequence[int],
                    headers: Sequence[Header | None]) -> None:
        """An endpoint that has no block ``n`` has only the blocks below it, whatever head it
        claimed; one that served ``n`` has at least ``n``."""
        for number, header in zip(numbers, headers, strict=True):
            if header is None and endpoint.head is not None and number <= endpoint.head:
                endpoint.head = number - 1
            elif header is not None and (endpoint.head is None or number > endpoint.head):
                endpoint.head = number

    # ------------------------------------------------------------------ health bookkeeping

    def _record_success(self, endpoint: Endpoint, seconds: float) -> None:
        endpoint.latency = seconds if endpoint.latency is None else \
            endpoint.latency * (1 - SMOOTHING) + seconds * SMOOTHING
        endpoint.failure_rate *= 1 - SMOOTHING
        endpoint.consecutive_failures = 0
        endpoint.cooldown_until = 0.0
        if self.metrics is not None:
            self.metrics.rpc_request_duration_seconds.labels(endpoint=endpoint.label).observe(seconds)
        self._transition(endpoint)

    def _record_failure(self, endpoint: Endpoint, error: Exception) -> None:
        kind = error_kind(error)
        self._record_error(endpoint, kind, str(error))
        if kind not in COOLDOWN_KINDS:
            return
        endpoint.failure_rate = endpoint.failure_rate * (1 - SMOOTHING) + SMOOTHING
        endpoint.consecutive_failures += 1
        pause = backoff_delay(endpoint.consecutive_failures, base=COOLDOWN_BASE, cap=COOLDOWN_CAP,
                              retry_after=getattr(error, "retry_after", None))
        endpoint.cooldown_until = time.monotonic() + pause
        self._transition(endpoint)

    def _record_error(self, endpoint: Endpoint, kind: str, message: str) -> None:
        endpoint.errors += 1
        endpoint.last_error = f"{kind}: {redact_urls_in(message)[:300]}"
        if self.metrics is not None:
            self.metrics.rpc_endpoint_errors.labels(endpoint=endpoint.label, kind=kind).inc()

    def _transition(self, endpoint: Endpoint) -> None:
        """Log an endpoint's state when it changes (not on every call)."""
        state = endpoint.state(self.best_head, time.monotonic())
        if state == endpoint.reported_state:
            return
        previous, endpoint.reported_state = endpoint.reported_state, state
        report = log.warning if state in ("down", "behind", "degraded", "wrong_chain") else log.info
        report("rpc endpoint state", endpoint=endpoint.label, state=state, previous=previous,
               head=endpoint.head, best_head=self.best_head, last_error=endpoint.last_error)

    def _publish(self, now: float) -> None:
        for endpoint in self.endpoints:
            self._transition(endpoint)
            if self.metrics is None:
                continue
            lag = endpoint.lag(self.best_head)
            if lag is not None:
                self.metrics.rpc_endpoint_head_lag_blocks.labels(endpoint=endpoint.label).set(lag)
            self.metrics.rpc_endpoint_health_score.labels(endpoint=endpoint.label).set(
                endpoint.score(self.best_head, now))

"""The JSON-RPC adapter: the only module of ingest that talks to the node.

The poller depends on the small :class:`ChainSource` interface (``chain_id()``, ``head()``,
``tagged_header(tag)``, ``headers(numbers)``, ``logs(first, last)``, ``logs_by_hash(hash)``,
``logs_by_hashes(hashes)``), so its reorg logic can be driven by any source.
:class:`JsonRpcClient` implements it for one endpoint with raw batched JSON-RPC over one
keep-alive aiohttp session and orjson (``ingest.endpoints.EndpointPool`` implements it over
several) — measured against web3.py's provider in
``scripts/benchmarks/ingest.py`` (docs/ingest.md): web3's request/response middleware and
AttributeDict formatting cost more than the whole database write, so the hot path is raw.

Every failure is turned into one of ``core.errors``' RPC errors, which say what to do:

- ``RpcUnavailable``: connection refused/reset, HTTP 5xx, HTTP 429 (``retry_after`` from the
  ``Retry-After`` header), JSON-RPC rate-limit errors; :class:`RpcTimeout` for timeouts.
- ``RpcRangeTooLarge``: provider limit errors for ``eth_getLogs`` (Infura/Alchemy "query
  returned more than 10000 results. Try with this block range [0x…, 0x…]" with ``suggested``,
  "block range too large", "exceed maximum block range", response-size errors, HTTP 413).
- ``RpcBadResponse``: not JSON, not JSON-RPC, wrong-typed or missing fields, removed logs;
  :class:`RpcReplyTooLarge` for a reply over ``max_response_bytes`` (``RPC_MAX_RESPONSE_MB``),
  which is refused before it is read whole — except for an ``eth_getLogs`` over several blocks,
  which raises ``RpcRangeTooLarge`` so the range is halved.
- :class:`RpcNodeError` (an ``RpcUnavailable``): any other JSON-RPC error object the node sent,
  with its code and message; :class:`BlockNotSeen` when it says it does not know the block
  ("unknown block", "block not found": a node that is behind, never a different chain).

Values come back normalised: hex strings lowercase, quantities as ``int``.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson

from core.errors import RpcBadResponse, RpcRangeTooLarge, RpcUnavailable
from core.redact import redact_url, redact_urls_in
from ingest.bloom import parse_bloom


class RpcTimeout(RpcUnavailable):
    """The node did not answer within ``RPC_TIMEOUT``: for ``eth_getLogs`` the range is halved."""


class RpcNodeError(RpcUnavailable):
    """The node answered with a JSON-RPC error object (not a range limit, not a rate limit).
    Transient for ingest (retried); ``code`` and ``node_message`` are the node's own."""

    def __init__(self, message: str, *, code: object = None, node_message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.node_message = node_message


class RpcReplyTooLarge(RpcBadResponse):
    """A reply larger than ``RPC_MAX_RESPONSE_MB`` (a hostile or broken endpoint, or one block
    whose logs alone exceed the bound): not read further, so it cannot exhaust memory. Fails
    over to the next endpoint and is retried with backoff; the message names the setting."""


class BlockNotSeen(RpcNodeError):
    """The node does not know the block asked for ("unknown block"): it has not seen it yet."""


MIB = 1 << 20
# The default of RPC_MAX_RESPONSE_MB: the largest reply read (see docs/ingest.md, "Memory").
DEFAULT_MAX_RESPONSE_BYTES = 32 * MIB

_UNKNOWN_BLOCK_MESSAGES = ("unknown block", "block not found", "header not found",
                           "cannot find block", "could not find block")


@dataclass(frozen=True, slots=True)
class Header:
    """The block header fields ingest needs; hashes lowercase ``0x`` hex; ``logs_bloom`` the
    2048-bit ``logsBloom`` as an int (``ingest.bloom``; 0: the block has no logs)."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int
    logs_bloom: int = 0


class Log(NamedTuple):
    """One log as stored (the ``events`` columns of docs/reference.md minus chain and time); absent topics are
    ``None``; hex lowercase."""

    block_number: int
    block_hash: str
    tx_hash: str
    tx_index: int
    log_index: int
    address: str
    topic0: str | None
    topic1: str | None
    topic2: str | None
    topic3: str | None
    data: str


class ChainSource(Protocol):
    """What the poller needs from a chain. Implementations raise ``core.errors`` RPC errors."""

    async def chain_id(self) -> int: ...

    async def head(self) -> int: ...

    async def tagged_header(self, tag: str) -> Header | None:
        """The header of ``finalized``/``safe``/``latest``; ``None`` when the node has none."""
        ...

    async def headers(self, numbers: Sequence[int]) -> list[Header | None]:
        """Headers by number in one round trip; ``None`` where the node has no such block."""
        ...

    async def logs(self, first: int, last: int, addresses: Sequence[str] = (), *,
                   topic0: str | None = None) -> list[Log]:
        """The range's logs of ``addresses`` (all when empty) whose first topic is ``topic0``
        (any when ``None``)."""
        ...

    async def logs_by_hash(self, block_hash: str, addresses: Sequence[str] = (), *,
                           topic0: str | None = None) -> list[Log]: ...

    async def logs_by_hashes(self, block_hashes: Sequence[str], addresses: Sequence[str] = (), *,
                             topic0: str | None = None) -> list[list[Log] | Exception]:
        """``logs_by_hash`` for many blocks in one round trip; per block either its logs or the
        error the node gave for it (``BlockNotSeen`` for a hash it does not know)."""
        ...


# Provider limit errors for eth_getLogs, lowercased substrings (Infura, Alchemy, QuickNode,
# Ankr, geth/erigon/reth, Cloudflare, BlastAPI ...).
_RANGE_MESSAGES = (
    "more than 10000 results", "query returned more than", "block range too large",
    "block range is too large", "exceed maximum block range", "exceeds maximum block range",
    "maximum block range", "range is too large", "response size", "response is too big",
    "response too large", "too many results", "log response size exceeded", "max results",
    "query timeout exceeded", "limit the query to at most", "range too large",
)
_RATE_MESSAGES = ("rate limit", "too many requests", "exceeded its compute units", "capacity exceeded",
                  "request limit")
_SUGGESTED_RANGE = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*,\s*(0x[0-9a-fA-F]+)\s*\]")


def classify_rpc_error(method: str, error: object) -> Exception:
    """Turn a JSON-RPC ``error`` object into the ``core.errors`` exception saying what to do."""
    if not isinstance(error, dict):
        return RpcBadResponse(f"{method}: malformed error object {str(error)[:120]!r}")
    message = str(error.get("message", ""))
    text = message.lower()
    summary = f"{method}: {error.get('code')} {message[:200]}"
    if method == "eth_getLogs" and any(m in text for m in _RANGE_MESSAGES):
        suggested = None
        if found := _SUGGESTED_RANGE.search(message):
            suggested = (int(found.group(1), 16), int(found.group(2), 16))
        return RpcRangeTooLarge(summary, suggested=suggested)
    if any(m in text for m in _RATE_MESSAGES):
        return RpcUnavailable(summary)
    if any(m in text for m in _UNKNOWN_BLOCK_MESSAGES):
        return BlockNotSeen(summary, code=error.get("code"), node_message=message)
    # Anything else the node says is treated as transient (internal errors, node syncing): it is
    # retried with backoff and logged, and nothing is written meanwhile.
    return RpcNodeError(summary, code=error.get("code"), node_message=message)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _quantity(value: object) -> int:
    if type(value) is not str or not value.startswith("0x"):
        raise TypeError(f"not a hex quantity: {value!r}")
    return int(value, 16)


def _hash32(value: object) -> str:
    if type(value) is not str or len(value) != 66 or not value.startswith("0x"):
        raise TypeError(f"not a 32-byte hash: {str(value)[:80]!r}")
    return value.lower()


def parse_header(raw: object) -> Header | None:
    """A header from ``eth_getBlockByNumber``; ``None`` for ``null`` (no such block yet)."""
    if raw is None:
        return None
    try:
        assert isinstance(raw, dict)
        return Header(_quantity(raw["number"]), _hash32(raw["hash"]), _hash32(raw["parentHash"]),
                      _quantity(raw["timestamp"]), parse_bloom(raw["logsBloom"]))
    except (AssertionError, KeyError, TypeError, ValueError) as error:
        raise RpcBadResponse(f"eth_getBlockByNumber: malformed header: {error}") from None


def parse_logs(raw: object) -> list[Log]:
    """Logs from an ``eth_getLogs`` reply **lowercased as a whole** (:func:`lowercase_json`: keys
    ``blockhash``, ``transactionhash``…, hex values lowercase already); raises
    ``RpcBadResponse`` on any malformed or removed entry.

    The hot loop of ingest (one pass per log): checks are inlined and folded — the ``0x``
    prefixes are checked on one concatenation, which also refuses any non-string (a list, an
    int or an object cannot be sliced and added to the others to make ``"0x0x0x0x"``), and
    ``int(value, 16)`` refuses non-strings by itself. Lowercasing the body once (a C loop over
    bytes) instead of seven ``str.lower()`` per log is ~1 µs a log."""
    if type(raw) is not list:
        raise RpcBadResponse(f"eth_getLogs: result is {type(raw).__name__}, not a list")
    logs: list[Log] = []
    append = logs.append
    new = tuple.__new__  # Log._make minus a Python call per log
    try:
        for item in raw:
            if item.get("removed"):
                raise ValueError("a removed log")
            topics = item["topics"]
            block_hash = item["blockhash"]
            tx_hash = item["transactionhash"]
            address = item["address"]
            data = item["data"]
            if ((block_hash[:2] + tx_hash[:2] + address[:2] + data[:2]) != "0x0x0x0x"
                    or len(block_hash) != 66 or len(tx_hash) != 66 or len(address) != 42
                    or type(topics) is not list or len(topics) > 4):
                raise TypeError("a hash, address, data or topics field has the wrong type or size")
            for topic in topics:  # (a non-string fails the slice comparison or len())
                if len(topic) != 66 or topic[:2] != "0x":
                    raise TypeError(f"topic {str(topic)[:80]!r} is not a 32-byte hash")
            count = len(topics)
            append(new(Log, (
                int(item["blocknumber"], 16), block_hash, tx_hash,
                int(item["transactionindex"], 16), int(item["logindex"], 16), address,
                topics[0] if count > 0 else None,
                topics[1] if count > 1 else None,
                topics[2] if count > 2 else None,
                topics[3] if count > 3 else None,
                data,
            )))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise RpcBadResponse(f"eth_getLogs: malformed log: {error}") from None
    return logs


def lowercase_json(value: object) -> Any:
    """``value`` as :func:`parse_logs` reads a reply: every key and string lowercased."""
    return orjson.loads(orjson.dumps(value).lower())


class JsonRpcClient:
    """Raw JSON-RPC over one keep-alive aiohttp session. Use as ``async with``.

    ``batch()`` sends up to ``batch_limit`` calls per HTTP request (providers cap batch sizes),
    concurrently when there are more.
    """

    def __init__(self, url: str, *, timeout: float = 20.0, batch_limit: int = 200,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.url = url
        self.label = redact_url(url)
        self.timeout = timeout
        self.batch_limit = batch_limit
        self.max_response_bytes = max_response_bytes
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> JsonRpcClient:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=30),
                headers={"content-type": "application/json"},
                json_serialize=lambda value: orjson.dumps(value).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, method: str, payload: bytes, *, lowercase: bool = False,
                    span: int = 0) -> Any:
        session = self._open()
        try:
            async with session.post(self.url, data=payload) as response:
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                body = await self._read(response, method, span)
        except TimeoutError:
            raise RpcTimeout(f"{method}: no answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as error:
            # aiohttp may quote the URL, whose path or query can hold the provider's API key.
            raise RpcUnavailable(f"{method}: {type(error).__name__}: "
                                 f"{redact_urls_in(str(error))}") from None
        if status == 429:
            raise RpcUnavailable(f"{method}: HTTP 429 rate limited", retry_after=retry_after)
        if status == 413:
            raise RpcRangeTooLarge(f"{method}: HTTP 413 request or response too large")
        if status >= 500:
            raise RpcUnavailable(f"{method}: HTTP {status}", retry_after=retry_after)
        if lowercase:
            # JSON stays valid lowercased (escapes are lowercase letters, hex is either case).
            # The original goes before parsing: two copies of a large reply are enough.
            body = body.lower()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            if status >= 400:
                raise RpcUnavailable(f"{method}: HTTP {status}: {body[:120]!r}") from None
            raise RpcBadResponse(f"{method}: not JSON (HTTP {status}): {body[:120]!r}") from None

    async def _read(self, response: aiohttp.ClientResponse, method: str, span: int) -> bytes:
        """The body, up to ``max_response_bytes`` (decompressed size: a gzip bomb is stopped
        too); a body of unknown length is read in chunks and stopped there. Over it:
        ``RpcRangeTooLarge`` for a range of ``span`` > 1 blocks (the fetcher halves it),
        :class:`RpcReplyTooLarge` otherwise."""
        limit = self.max_response_bytes
        declared = response.content_length
        if declared is not None and declared <= limit and "Content-Encoding" not in response.headers:
            return await response.read()  # aiohttp stops at the declared length
        if declared is None or declared <= limit:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
            else:
                return b"".join(chunks)
        told = f"{declared:,} bytes" if declared is not None and declared > limit else \
            f"more than {limit:,} bytes"
        if span > 1:
            raise RpcRangeTooLarge(f"{method}: reply of {told} for {span} blocks exceeds "
                                   f"RPC_MAX_RESPONSE_MB ({limit / MIB:g} MiB)")
        raise RpcReplyTooLarge(f"{method}: reply of {told} exceeds RPC_MAX_RESPONSE_MB "
                               f"({limit / MIB:g} MiB), not read further; raise it only if one "
                               "block's logs are really that large")

    async def call(self, method: str, params: Sequence[Any] = (), *, lowercase: bool = False,
                   span: int = 0) -> Any:
        """One call; returns ``result`` (every key and string lowercased with ``lowercase``) or
        raises the classified error. ``span``: the blocks an ``eth_getLogs`` range covers (a
        reply too large for a range of several is a range error, see :meth:`_read`)."""
        request_id = next(self._ids)
        reply = await self._post(method, orjson.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}),
            lowercase=lowercase, span=span)
        if type(reply) is not dict:
            raise RpcBadResponse(f"{method}: reply is not a JSON-RPC object")
        if "error" in reply:
            raise classify_rpc_error(method, reply["error"])
        if "result" not in reply:
            raise RpcBadResponse(f"{method}: reply has no result")
        return reply["result"]

    async def batch(self, method: str, params_list: Sequence[Sequence[Any]], *,
                    item_errors: bool = False, lowercase: bool = False,
                    parse: Callable[[Any], Any] | None = None) -> list[Any]:
        """Many calls of one method, batched; results in the order of ``params_list``. A call
        the node answered with an error raises it, or with ``item_errors`` takes its place in
        the list as the classified exception (a load balancer may route each call of a batch to
        another node: one failed call says nothing about the others). ``parse`` turns each result
        as its HTTP reply arrives, so a reply's JSON is dropped before the next one is parsed
        (a header batch of mainnet blocks carries every transaction hash)."""
        chunks = [params_list[i:i + self.batch_limit]
                  for i in range(0, len(params_list), self.batch_limit)]
        if len(chunks) == 1:
            return await self._batch_once(method, chunks[0], item_errors=item_errors,
                                          lowercase=lowercase, parse=parse)
        parts = await asyncio.gather(*(self._batch_once(method, chunk, item_errors=item_errors,
                                                        lowercase=lowercase, parse=parse)
                                       for chunk in chunks))
        return [result for part in parts for result in part]

    async def _batch_once(self, method: str, params_list: Sequence[Sequence[Any]], *,
                          item_errors: bool = False, lowercase: bool = False,
                          parse: Callable[[Any], Any] | None = None) -> list[Any]:
        if not params_list:
            return []
        first_id = next(self._ids)
        ids = [first_id] + [next(self._ids) for _ in range(len(params_list) - 1)]
        payload = orjson.dumps([{"jsonrpc": "2.0", "id": i, "method": method, "params": list(p)}
                                for i, p in zip(ids, params_list, strict=True)])
        reply = await self._post(method, payload, lowercase=lowercase)
        if type(reply) is dict and "error" in reply:  # some providers refuse a whole batch
            raise classify_rpc_error(method, reply["error"])
        if type(reply) is not list:
            raise RpcBadResponse(f"{method}: batch reply is not a list")
        by_id: dict[object, Any] = {}
        for item in reply:
            if type(item) is not dict:
                raise RpcBadResponse(f"{method}: batch item is not an object")
            if "error" in item:
                if not item_errors:
                    raise classify_rpc_error(method, item["error"])
                by_id[item.get("id")] = classify_rpc_error(method, item["error"])
                continue
            by_id[item.get("id")] = item.get("result") if parse is None else parse(item.get("result"))
        try:
            return [by_id[i] for i in ids]
        except KeyError:
            raise RpcBadResponse(f"{method}: batch reply is missing answers") from None

    # ChainSource ---------------------------------------------------------------------------

    async def chain_id(self) -> int:
        try:
            return _quantity(await self.call("eth_chainId"))
        except (TypeError, ValueError) as error:
            raise RpcBadResponse(f"eth_chainId: {error}") from None

    async def head(self) -> int:
        try:
            return _quantity(await self.call("eth_blockNumber"))
        except (TypeError, ValueError) as error:
            raise RpcBadResponse(f"eth_blockNumber: {error}") from None

    async def tagged_header(self, tag: str) -> Header | None:
        return parse_header(await self.call("eth_getBlockByNumber", [tag, False]))

    async def headers(self, numbers: Sequence[int]) -> list[Header | None]:
        headers: list[Header | None] = await self.batch(
            "eth_getBlockByNumber", [(hex(n), False) for n in numbers], parse=parse_header)
        for number, header in zip(numbers, headers, strict=True):
            if header is not None and header.number != number:
                raise RpcBadResponse(f"eth_getBlockByNumber: asked {number}, got {header.number}")
        return headers

    async def logs(self, first: int, last: int, addresses: Sequence[str] = (), *,
                   topic0: str | None = None) -> list[Log]:
        query: dict[str, object] = {"fromBlock": hex(first), "toBlock": hex(last)}
        if addresses:
            query["address"] = list(addresses)
        if topic0 is not None:
            query["topics"] = [topic0]
        return parse_logs(await self.call("eth_getLogs", [query], lowercase=True,
                                          span=last - first + 1))

    async def logs_by_hash(self, block_hash: str, addresses: Sequence[str] = (), *,
                           topic0: str | None = None) -> list[Log]:
        query: dict[str, object] = {"blockHash": block_hash}
        if addresses:
            query["address"] = list(addresses)
        if topic0 is not None:
            query["topics"] = [topic0]
        return parse_logs(await self.call("eth_getLogs", [query], lowercase=True))

    async def logs_by_hashes(self, block_hashes: Sequence[str], addresses: Sequence[str] = (), *,
                             topic0: str | None = None) -> list[list[Log] | Exception]:
        queries: list[dict[str, object]] = [{"blockHash": h} for h in block_hashes]
        if addresses:
            for query in queries:
                query["address"] = list(addresses)
        if topic0 is not None:
            for query in queries:
                query["topics"] = [topic0]
        results = await self.batch("eth_getLogs", [[q] for q in queries], item_errors=True,
                                   lowercase=True)
        answers: list[list[Log] | Exception] = []
        for result in results:
            if isinstance(result, Exception):
                answers.append(result)
                continue
            try:
                answers.append(parse_logs(result))
            except RpcBadResponse as error:
                answers.append(error)
        return answers

"""A small real misbehaving JSON-RPC proxy in front of a node (anvil), for ingest and e2e tests.

A ``tests.support.http_server.BackgroundHttpServer``, so sync tests, async tests and
subprocesses (``RPC_URL=proxy.url``) can all use it. Faults are scripted per method and per call
count; a batch request counts as one call of its first item's method::

    proxy = RpcProxy(anvil.url)
    proxy.fail("eth_getLogs", Fault.http(429, retry_after=0.2), times=2)     # next 2 calls
    proxy.fail("eth_blockNumber", Fault.http(500), times=1, after=3)        # the 4th call
    proxy.fail("eth_getLogs", Fault.timeout(5.0))                          # one slow answer
    proxy.limit_log_range(10)      # Infura-style "more than 10000 results … [0x…, 0x…]"
    proxy.calls["eth_getLogs"], proxy.log_ranges   # what the client did
    proxy.close()

Kinds of fault: HTTP status (with ``Retry-After``), a delay before answering (a timeout for a
client with a shorter timeout), a JSON-RPC error object, garbage bytes instead of JSON, a
wrong-typed field in an otherwise real answer, a dropped connection, and a huge reply
(``Fault.huge(megabytes)``, streamed, chunked or with its length announced).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.support.http_server import BackgroundHttpServer


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    code: int = -32000
    message: str = ""
    size: int = 0
    declared: bool = False

    @classmethod
    def http(cls, status: int, *, retry_after: float | None = None) -> Fault:
        return cls("http", status=status, retry_after=retry_after)

    @classmethod
    def timeout(cls, seconds: float) -> Fault:
        """Answer correctly, but only after ``seconds``."""
        return cls("delay", delay=seconds)

    @classmethod
    def rpc_error(cls, message: str, code: int = -32005) -> Fault:
        return cls("rpc_error", code=code, message=message)

    @classmethod
    def garbage(cls) -> Fault:
        return cls("garbage")

    @classmethod
    def wrong_type(cls) -> Fault:
        """Forward, then turn one field of the answer into the wrong JSON type."""
        return cls("wrong_type")

    @classmethod
    def disconnect(cls) -> Fault:
        return cls("disconnect")

    @classmethod
    def huge(cls, megabytes: int, *, declared: bool = False) -> Fault:
        """A well-formed-looking reply of ``megabytes`` MiB, streamed (never held in memory):
        chunked, or with its ``Content-Length`` announced when ``declared``."""
        return cls("huge", size=megabytes << 20, declared=declared)


@dataclass
class _Rule:
    fault: Fault
    first_call: int  # 1-based call number of the method this rule starts at
    times: int


class RpcProxy(BackgroundHttpServer):
    thread_name = "rpc-proxy"

    def __init__(self, upstream: str, *, port: int | None = None) -> None:
        self.upstream = upstream
        self.calls: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self.log_ranges: list[tuple[int, int]] = []
        self._rules: dict[str, list[_Rule]] = defaultdict(list)
        self._max_log_range: int | None = None
        self._lock = threading.Lock()
        super().__init__(port=port)

    # scripting ------------------------------------------------------------------------------

    def fail(self, method: str, fault: Fault, *, times: int = 1, after: int = 0) -> None:
        """Serve ``fault`` to ``times`` calls of ``method``, starting ``after`` calls from now."""
        with self._lock:
            self._rules[method].append(_Rule(fault, self.calls[method] + after + 1, times))

    def limit_log_range(self, max_blocks: int | None) -> None:
        """Refuse ``eth_getLogs`` ranges wider than ``max_blocks`` the Infura way, suggesting
        ``[from, from + max_blocks - 1]``; ``None`` lifts the limit."""
        self._max_log_range = max_blocks

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
        self._max_log_range = None

    # serving --------------------------------------------------------------------------------

    def _next_fault(self, method: str) -> Fault | None:
        with self._lock:
            self.calls[method] += 1
            number = self.calls[method]
            for rule in self._rules[method]:
                if rule.first_call <= number < rule.first_call + rule.times:
                    self.faults_served[f"{method}:{rule.fault.kind}"] += 1
                    return rule.fault
        return None

    def _range_refusal(self, request: Any) -> dict[str, Any] | None:
        limit = self._max_log_range
        if limit is None or request.get("method") != "eth_getLogs":
            return None
        query = (request.get("params") or [{}])[0]
        if "fromBlock" not in query:
            return None
        first, last = int(query["fromBlock"], 16), int(query["toBlock"], 16)
        self.log_ranges.append((first, last))
        if last - first + 1 <= limit:
            return None
        return {"jsonrpc": "2.0", "id": request.get("id"), "error": {
            "code": -32005, "message": "query returned more than 10000 results. Try with this "
            f"block range [{hex(first)}, {hex(first + limit - 1)}]."}}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = orjson.loads(body)
        first = payload[0] if isinstance(payload, list) and payload else payload
        method = first.get("method", "") if isinstance(first, dict) else ""
        fault = self._next_fault(method)
        if fault is not None:
            if fault.kind == "http":
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                return web.Response(status=fault.status, text="upstream says no", headers=headers)
            if fault.kind == "delay":
                await asyncio.sleep(fault.delay)
            elif fault.kind == "rpc_error":
                errors = [{"jsonrpc": "2.0", "id": item.get("id"),
                           "error": {"code": fault.code, "message": fault.message}}
                          for item in (payload if isinstance(payload, list) else [payload])]
                return _json(errors if isinstance(payload, list) else errors[0])
            elif fault.kind == "garbage":
                return web.Response(status=200, body=b"<html>502 Bad Gateway</html>",
                                    content_type="text/html")
            elif fault.kind == "huge":
                return await _stream_huge(request, first.get("id"), fault)
            elif fault.kind == "disconnect":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
        if not isinstance(payload, list):
            refusal = self._range_refusal(payload)
            if refusal is not None:
                return _json(refusal)
        async with self.session.post(self.upstream, data=body,
                                      headers={"content-type": "application/json"}) as upstream:
            reply = await upstream.read()
        if fault is not None and fault.kind == "wrong_type":
            reply = orjson.dumps(_corrupt(orjson.loads(reply)))
        return web.Response(status=200, body=reply, content_type="application/json")


async def _stream_huge(request: web.Request, request_id: object, fault: Fault) -> web.StreamResponse:
    head = orjson.dumps({"jsonrpc": "2.0", "id": request_id})[:-1] + b', "result": ['
    item = orjson.dumps({"address": "0x" + "ab" * 20, "topics": [], "data": "0x" + "00" * 400,
                         "removed": False}) + b","
    chunk = item * ((1 << 20) // len(item))
    chunks, tail = divmod(max(0, fault.size - len(head) - 2), len(chunk))
    response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
    if fault.declared:
        response.content_length = fault.size
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(head)
        for _ in range(chunks):
            await response.write(chunk)
        await response.write(b" " * tail + b"]}")
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client stopped reading: what it should do
    return response


def _json(value: Any) -> web.Response:
    return web.Response(status=200, body=orjson.dumps(value), content_type="application/json")


def _corrupt(reply: Any) -> Any:
    """Make one field of a real answer the wrong type (a number where hex is promised)."""
    item = reply[0] if isinstance(reply, list) and reply else reply
    if not isinstance(item, dict):
        return reply
    result = item.get("result")
    if isinstance(result, list) and result and isinstance(result[0], dict):
        result[0]["logIndex"] = 7  # eth_getLogs
    elif isinstance(result, dict):
        result["number"] = 7  # eth_getBlockByNumber
    else:
        item["result"] = {"unexpected": True}
    return reply

"""A load-balanced JSON-RPC provider of our own: two views of one anvil, one of them lagging.

Hosted providers and gateways route each request — and some route each call of a batch — to one
of several nodes that can be a few blocks apart. :class:`LaggingProvider` reproduces that with
one real anvil behind it:

- the **fresh** view answers exactly as anvil does;
- the **lagging** view is a node 1–3 blocks behind: its head follows anvil's, never going back,
  never catching up (``lag``). It answers ``eth_blockNumber`` with its own head, ``null`` for
  blocks above it (by number or by hash, ``latest`` is its head), clamps ``eth_getLogs`` ranges
  to its head silently (logs of newer blocks are simply absent, as geth does), and answers
  ``eth_getLogs`` by ``blockHash`` for a block it has not seen with ``-32000 unknown block``.

Every call — a single request, or each call inside a batch — goes to the lagging view with
probability ``lagging_share`` (seeded: ``seed``), so one batch of headers may mix both views.
``lagging_share=1.0`` makes an endpoint that is simply behind. ``stats`` counts what the
lagging view withheld (``null_blocks``, ``clamped_log_ranges``, ``unknown_block``) and how many
calls each view served, so a test can show the provider really lied::

    provider = LaggingProvider(anvil.url, seed=7)
    os.environ["RPC_URL"] = provider.url
    ...
    assert provider.stats["clamped_log_ranges"] > 0
    provider.close()
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from tests.support.http_server import BackgroundHttpServer

JsonCall = dict[str, Any]
HEAD_TAGS = ("latest", "pending")


class LaggingProvider(BackgroundHttpServer):
    thread_name = "lagging-provider"

    def __init__(self, upstream: str, *, lagging_share: float = 0.5, lag: tuple[int, int] = (1, 3),
                 seed: int | None = None, port: int | None = None) -> None:
        self.upstream = upstream
        self.lagging_share = lagging_share
        self.lag = lag
        self.stats: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._lagging_head: int | None = None
        super().__init__(port=port)

    # serving --------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = orjson.loads(await request.read())
        if isinstance(payload, list):
            replies = await asyncio.gather(*(self._route(call) for call in payload))
            return _json(list(replies))
        return _json(await self._route(payload))

    async def _route(self, call: JsonCall) -> JsonCall:
        with self._lock:
            lagging = self._random.random() < self.lagging_share
        self.stats["lagging_calls" if lagging else "fresh_calls"] += 1
        try:
            if lagging:
                return await self._lagging(call)
            return await self._forward(call)
        except _RpcError as error:
            return {"jsonrpc": "2.0", "id": call.get("id"),
                    "error": {"code": error.code, "message": error.message}}

    async def _upstream(self, method: str, params: list[Any]) -> Any:
        reply = await self._forward({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        if "error" in reply:
            raise _RpcError(reply["error"].get("code", -32000), reply["error"].get("message", ""))
        return reply.get("result")

    async def _forward(self, call: JsonCall) -> JsonCall:
        async with self.session.post(self.upstream, data=orjson.dumps(call),
                                     headers={"content-type": "application/json"}) as response:
            reply: JsonCall = orjson.loads(await response.read())
        return reply

    # the lagging view ---------------------------------------------------------------------------

    async def lagging_head(self) -> int:
        """The lagging node's head: behind anvil's by ``lag`` blocks, never going back (except
        below anvil's own head after an ``evm_revert``), never caught up."""
        head = int(await self._upstream("eth_blockNumber", []), 16)
        with self._lock:
            behind = head - self._random.randint(*self.lag)
            current = self._lagging_head if self._lagging_head is not None else behind
            self._lagging_head = max(0, min(max(current, behind), head - self.lag[0]))
            return self._lagging_head

    async def _lagging(self, call: JsonCall) -> JsonCall:
        method, params = call.get("method"), list(call.get("params") or [])
        head = await self.lagging_head()
        if method == "eth_blockNumber":
            return _result(call, hex(head))
        if method == "eth_getBlockByNumber":
            return _result(call, await self._block_by_number(head, params))
        if method == "eth_getBlockByHash":
            block = await self._upstream(method, params)
            if block is not None and int(block["number"], 16) > head:
                self.stats["null_blocks"] += 1
                block = None
            return _result(call, block)
        if method == "eth_getLogs" and params and isinstance(params[0], dict):
            return _result(call, await self._logs(head, dict(params[0])))
        return await self._forward(call)

    async def _block_by_number(self, head: int, params: list[Any]) -> Any:
        tag = params[0]
        if tag in HEAD_TAGS:
            return await self._upstream("eth_getBlockByNumber", [hex(head), *params[1:]])
        if tag in ("safe", "finalized"):
            block = await self._upstream("eth_getBlockByNumber", params)
            if block is not None and int(block["number"], 16) > head:
                block = await self._upstream("eth_getBlockByNumber", [hex(head), *params[1:]])
            return block
        if tag != "earliest" and int(tag, 16) > head:
            self.stats["null_blocks"] += 1
            return None
        return await self._upstream("eth_getBlockByNumber", params)

    async def _logs(self, head: int, query: dict[str, Any]) -> Any:
        if "blockHash" in query:
            block = await self._upstream("eth_getBlockByHash", [query["blockHash"], False])
            if block is None or int(block["number"], 16) > head:
                self.stats["unknown_block"] += 1
                raise _RpcError(-32000, "unknown block")
            return await self._upstream("eth_getLogs", [query])
        first = _block_param(query.get("fromBlock", "latest"), head)
        last = _block_param(query.get("toBlock", "latest"), head)
        if last > head:
            self.stats["clamped_log_ranges"] += 1
            last = head
        if first > last:
            return []
        return await self._upstream("eth_getLogs", [{**query, "fromBlock": hex(first),
                                                    "toBlock": hex(last)}])


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _block_param(value: str, head: int) -> int:
    if value in HEAD_TAGS:
        return head
    if value == "earliest":
        return 0
    return int(value, 16)


def _result(call: JsonCall, result: Any) -> JsonCall:
    return {"jsonrpc": "2.0", "id": call.get("id"), "result": result}


def _json(value: Any) -> web.Response:
    return web.Response(status=200, body=orjson.dumps(value), content_type="application/json")

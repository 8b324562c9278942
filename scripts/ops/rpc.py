"""Ask a JSON-RPC node which chain it serves and where its head is (status, the demo, start-up
ordering in Procfile.demo).

Deliberately tiny and separate from ``ingest/rpc.py``: these are one-shot questions with a short
timeout whose failure is reported, never retried.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from pydantic import BaseModel

from core.redact import redact_url, redact_urls_in


class NodeHead(BaseModel):
    url: str  # redacted: no API key in status output
    chain_id: int | None = None
    head: int | None = None
    error: str | None = None


async def _call(session: aiohttp.ClientSession, url: str, method: str) -> Any:
    payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": []}
    async with session.post(url, json=payload) as response:
        response.raise_for_status()
        reply = await response.json(content_type=None)
    if not isinstance(reply, dict) or "result" not in reply:
        raise ValueError(f"{method}: {reply.get('error') if isinstance(reply, dict) else reply!r}")
    return reply["result"]


async def node_head(url: str, *, request_seconds: float = 3.0) -> NodeHead:
    """The node's chain id and head block number; ``error`` says why when it does not answer."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_seconds)) as session:
            chain_id, head = await asyncio.gather(_call(session, url, "eth_chainId"),
                                                  _call(session, url, "eth_blockNumber"))
        return NodeHead(url=redact_url(url), chain_id=int(chain_id, 16), head=int(head, 16))
    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as error:
        return NodeHead(url=redact_url(url),
                        error=redact_urls_in(f"{type(error).__name__}: {error}".rstrip(": ")))


async def wait_for_node(url: str, *, within: float) -> NodeHead:
    """Poll until the node answers; raise ``TimeoutError`` naming the URL after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        answer = await node_head(url, request_seconds=2.0)
        if answer.error is None:
            return answer
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"node {redact_url(url)} did not answer within {within:.0f} s ({answer.error})")
        await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    """``python -m scripts.ops.rpc wait URL [--within S]``: exit 0 once the node answers, 1 with
    one line when it does not within S seconds (used to order start-up in Procfile.demo)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m scripts.ops.rpc")
    parser.add_argument("command", choices=["wait"])
    parser.add_argument("url")
    parser.add_argument("--within", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(wait_for_node(args.url, within=args.within))
    except TimeoutError as error:
        print(f"wait: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

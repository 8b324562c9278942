"""A small real aiohttp server on a free port, served from a background thread.

The base of the misbehaving JSON-RPC servers in ``tests/support`` (``rpc_proxy.RpcProxy``,
``lagging_provider.LaggingProvider``): sync tests, async tests and subprocesses (``RPC_URL=...``)
can all talk to it. Subclasses implement ``handle(request)``; every POST path reaches it (hosted
providers put API keys in the path). ``self.session`` is a client session for the upstream node,
living on the server's own loop.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import ClientSession, ClientTimeout, web

from tests.support.ports import free_port


class BackgroundHttpServer:
    """Start on construction, ``close()`` to stop; ``url`` is where it listens."""

    thread_name = "http-server"

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self.thread_name} did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self.session = ClientSession(timeout=ClientTimeout(total=60))
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/{path:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def close(self) -> None:
        async def shutdown() -> None:
            await self._runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

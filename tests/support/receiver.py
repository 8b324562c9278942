"""A real Standard Webhooks receiver in its own process, for tests, the e2e suite and benchmarks.

The server (aiohttp, ``python -m tests.support.receiver``) accepts ``POST`` on any path except
``/_control/*``, verifies each request with the ``standardwebhooks`` library (a verifier nobody
here wrote) when it was given the secret, records it, and answers as scripted:

    with Receiver(secret="whsec_...") as receiver:
        receiver.script(Step(status=503, times=2), Step(status=429, retry_after="2"))
        ...                                       # then 200 for everything after the script
        seen = receiver.wait_for(3)               # list[Received], in arrival order
        assert all(r.verified for r in seen)

Steps are consumed in order, one request each (``times`` repeats a step); ``hang`` holds the
request that many seconds before answering (use a value longer than the client's timeout to
never answer). Requests are recorded on arrival, before any hang. ``fast=True`` skips
verification and JSON parsing and keeps only ``webhook-id`` (benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Step:
    """How to answer one request: ``status`` after ``hang`` seconds, with ``retry_after`` as
    the ``Retry-After`` header and ``body`` as the response body; ``times`` requests in a row."""

    status: int = 200
    times: int = 1
    hang: float = 0.0
    retry_after: str | None = None
    body: str = ""


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it. ``verified`` is ``None`` when the receiver has no
    secret (or runs ``fast``); ``error`` says why verification failed."""

    webhook_id: str | None
    timestamp: str | None
    signature: str | None
    path: str
    body: str
    headers: dict[str, str]
    verified: bool | None
    error: str | None
    received_at: float
    answered: int
    payload: dict[str, Any] | None = field(default=None)

    @property
    def type(self) -> str | None:
        return self.payload.get("type") if self.payload else None


class Receiver:
    """Start/stop the receiver process, script its behaviour, read what it received."""

    def __init__(self, *, secret: str | None = None, fast: bool = False,
                 port: int | None = None, host: str = "127.0.0.1") -> None:
        self.secret = secret
        self.fast = fast
        self.host = host
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The webhook URL to configure in an action."""
        return f"{self.base_url}/hook"

    def start(self) -> Receiver:
        args = [sys.executable, "-m", "tests.support.receiver", "--host", self.host,
                "--port", str(self.port)]
        if self.fast:
            args.append("--fast")
        env = {**os.environ}
        if self.secret:
            env["RECEIVER_SECRET"] = self.secret  # not on the command line (ps would show it)
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                self._http.get(f"{self.base_url}/_control/health").raise_for_status()
                return self
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                    self.stop()
                    raise RuntimeError(f"receiver did not start: {stderr}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self._http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def script(self, *steps: Step) -> None:
        """Replace the script: the next requests get these answers, then 200."""
        self._http.post(f"{self.base_url}/_control/script",
                        json=[asdict(step) for step in steps]).raise_for_status()

    def reset(self) -> None:
        """Forget received requests and the script."""
        self._http.post(f"{self.base_url}/_control/reset").raise_for_status()

    def count(self) -> int:
        return int(self._http.get(f"{self.base_url}/_control/count").json()["count"])

    def received(self) -> list[Received]:
        return [Received(**item) for item in
                self._http.get(f"{self.base_url}/_control/requests").json()]

    def wait_for(self, count: int | Callable[[list[Received]], bool], *,
                 timeout: float = 30.0) -> list[Received]:
        """Wait until ``count`` requests arrived (or the predicate holds); return them all.
        Raises ``TimeoutError`` with what arrived."""
        done = (lambda seen: len(seen) >= count) if isinstance(count, int) else count
        deadline = time.monotonic() + timeout
        while True:
            seen = self.received()
            if done(seen):
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver saw {len(seen)} requests: "
                                   f"{[(r.webhook_id, r.answered) for r in seen]}")
            time.sleep(0.05)


# --- the server process -------------------------------------------------------------------------

def _serve(host: str, port: int, *, secret: str | None, fast: bool) -> None:
    from aiohttp import web
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    verifier = Webhook(secret) if secret else None
    received: list[dict[str, Any]] = []
    script: list[Step] = []
    state = {"count": 0}

    def next_step() -> Step:
        while script:
            step = script[0]
            if step.times <= 1:
                script.pop(0)
            else:
                script[0] = Step(**{**asdict(step), "times": step.times - 1})
            return step
        return Step()

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        state["count"] += 1
        step = next_step()
        if fast:
            received.append({"webhook_id": request.headers.get("webhook-id"),
                             "timestamp": None, "signature": None, "path": request.path,
                             "body": "", "headers": {}, "verified": None, "error": None,
                             "received_at": time.time(), "answered": step.status})
        else:
            body = raw.decode("utf-8", errors="replace")
            headers = dict(request.headers)
            verified, error, payload = None, None, None
            if verifier is not None:
                try:
                    payload = verifier.verify(body, headers)
                    verified = True
                except (WebhookVerificationError, ValueError) as failure:
                    verified, error = False, str(failure) or type(failure).__name__
            if payload is None:
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = None
            received.append({"webhook_id": request.headers.get("webhook-id"),
                             "timestamp": request.headers.get("webhook-timestamp"),
                             "signature": request.headers.get("webhook-signature"),
                             "path": request.path, "body": body, "headers": headers,
                             "verified": verified, "error": error, "received_at": time.time(),
                             "answered": step.status, "payload": payload})
        if step.hang:
            await asyncio.sleep(step.hang)
        headers_out = {"retry-after": step.retry_after} if step.retry_after else None
        return web.Response(status=step.status, text=step.body, headers=headers_out)

    async def set_script(request: web.Request) -> web.Response:
        script[:] = [Step(**item) for item in await request.json()]
        return web.json_response({"steps": len(script)})

    async def reset(_: web.Request) -> web.Response:
        received.clear()
        script.clear()
        state["count"] = 0
        return web.json_response({})

    async def requests(_: web.Request) -> web.Response:
        return web.json_response(received)

    async def count(_: web.Request) -> web.Response:
        return web.json_response({"count": state["count"]})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=4 * 2**20)
    app.router.add_get("/_control/health", health)
    app.router.add_get("/_control/requests", requests)
    app.router.add_get("/_control/count", count)
    app.router.add_post("/_control/script", set_script)
    app.router.add_post("/_control/reset", reset)
    app.router.add_route("*", "/{tail:.*}", hook)
    web.run_app(app, host=host, port=port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Standard Webhooks test receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fast", action="store_true", help="no verification, ids only")
    args = parser.parse_args()
    _serve(args.host, args.port, secret=os.environ.get("RECEIVER_SECRET"), fast=args.fast)


if __name__ == "__main__":
    main()

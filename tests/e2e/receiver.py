"""A real signed-webhook receiver in its own process, verifying with ``standardwebhooks``.

Run as ``python -m tests.e2e.receiver --port P --secret whsec_…``. Every POST is verified with the
reference Standard Webhooks library and recorded (path, ``webhook-id``, verification result, the
status answered, the body). Behaviour is scripted per path over HTTP, so a test can make one
endpoint answer 503 for 20 s, or 400 for ever, while the others answer 200:

- ``PUT /_script`` ``{"path": "/hooks/a", "status": 503, "seconds": 20, "delay": 0}``
  (``seconds`` null = until changed; status 200 = healthy; ``delay``: hold each answer that
  long — a slow endpoint, recorded on arrival);
- ``GET /_received`` → every recorded POST, in arrival order;
- ``GET /_health`` → ``ok``.

A POST whose signature does not verify is answered 401 and recorded with ``verified: false``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Script:
    status: int
    until: float | None  # monotonic deadline; None = until changed
    delay: float = 0.0  # seconds to hold each answer while the script applies


def build_app(secret: str) -> web.Application:
    verifier = Webhook(secret)
    received: list[dict[str, Any]] = []
    scripts: dict[str, Script] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        record: dict[str, Any] = {
            "path": request.path, "webhook_id": request.headers.get("webhook-id"),
            "webhook_timestamp": request.headers.get("webhook-timestamp"),
            "content_type": request.headers.get("content-type"), "received_at": time.time(),
        }
        try:
            record["body"] = verifier.verify(body, dict(request.headers))
            record["verified"] = True
        except WebhookVerificationError as error:
            record["verified"], record["error"] = False, str(error)
            try:
                record["body"] = json.loads(body)
            except ValueError:
                record["body"] = body.decode(errors="replace")
        script = scripts.get(request.path)
        active = script is not None and (script.until is None or time.monotonic() < script.until)
        status = 200
        if not record["verified"]:
            status = 401
        elif script is not None and active:
            status = script.status
        record["status"] = status
        received.append(record)
        if script is not None and active and script.delay:
            await asyncio.sleep(script.delay)
        return web.json_response({"ok": status < 300}, status=status)

    async def set_script(request: web.Request) -> web.Response:
        spec = await request.json()
        seconds = spec.get("seconds")
        scripts[spec["path"]] = Script(
            status=int(spec["status"]),
            until=None if seconds is None else time.monotonic() + float(seconds),
            delay=float(spec.get("delay") or 0.0))
        return web.json_response({"ok": True})

    async def list_received(_: web.Request) -> web.Response:
        return web.json_response(received)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/_health", health)
    app.router.add_get("/_received", list_received)
    app.router.add_put("/_script", set_script)
    app.router.add_post("/{path:.*}", hook)
    return app


class Receiver:
    """The test's handle on a receiver process: start, script, read what arrived, stop."""

    def __init__(self, *, secret: str, log_path: Path) -> None:
        self.secret = secret
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.receiver", "--port", str(self.port),
                 "--secret", secret], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self._http = httpx.Client(timeout=10)
        deadline = time.monotonic() + 20
        while True:
            try:
                self._http.get(f"{self.base}/_health").raise_for_status()
                return
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"receiver did not start:\n{log_path.read_text()}") from None
                time.sleep(0.05)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def script(self, path: str, status: int, seconds: float | None = None, *,
               delay: float = 0.0) -> None:
        """Answer ``status`` on ``path`` for ``seconds`` (None: until scripted again), each
        answer held ``delay`` seconds."""
        self._http.put(f"{self.base}/_script", json={"path": "/" + path.lstrip("/"),
                                                     "status": status, "seconds": seconds,
                                                     "delay": delay}
                       ).raise_for_status()

    def received(self) -> list[dict[str, Any]]:
        reply = self._http.get(f"{self.base}/_received")
        reply.raise_for_status()
        records: list[dict[str, Any]] = reply.json()
        return records

    def stop(self) -> None:
        self._http.close()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    web.run_app(build_app(args.secret), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()

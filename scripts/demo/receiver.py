"""A small webhook receiver for the demo: verifies each POST with the Standard Webhooks reference
library and prints it readably.

    DEMO_SECRET=whsec_... python -m scripts.demo.receiver --port 9000 [--exit-after N]

Answers 204 to a verified delivery, 401 to a bad or missing signature. Repeated POSTs of one
``webhook-id`` (retries) are printed as repeats. With ``--exit-after N`` (``make run --once``) it
exits 0 once N distinct deliveries carrying the expected values have been verified, and 1 at
the first delivery that fails verification, naming the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from scripts.demo import plan


def _short(hex_value: str) -> str:
    return f"{hex_value[:6]}…{hex_value[-4:]}" if len(hex_value) > 14 else hex_value


def _amount(event: dict[str, Any], raw: str) -> str:
    if event.get("address", "").lower() == plan.token_address().lower():
        whole, fraction = divmod(int(raw), 10**plan.DECIMALS)
        shown = f"{whole:,}" + (f".{fraction:018d}".rstrip("0") if fraction else "")
        return f"{shown} {plan.TOKEN_SYMBOL}"
    return raw


def describe(payload: dict[str, Any], webhook_id: str, repeat: bool) -> str:
    """Three readable lines for one verified delivery."""
    event = payload.get("event", {})
    args = event.get("args", {})
    parts = []
    for name, value in args.items():
        if isinstance(value, str) and value.startswith("0x"):
            parts.append(f"{name} {_short(value)}")
        elif name == "value" and isinstance(value, str) and value.isdigit():
            parts.append(f"{name} {_amount(event, value)}")
        else:
            parts.append(f"{name} {value}")
    flags = " (repeat: a retry of a delivery already received)" if repeat else ""
    flags += " (replay)" if payload.get("replay") else ""
    return (f"✔ verified {webhook_id} {payload.get('type')} · trigger "
            f"{payload.get('trigger', {}).get('name')}{flags}\n"
            f"    {event.get('name')}  {'  '.join(parts)}\n"
            f"    chain {event.get('chain_id')} · block {event.get('block_number')} · "
            f"tx {_short(str(event.get('tx_hash')))} · log {event.get('log_index')}")


class Receiver:
    """Counts verified deliveries; ``done`` is set when the ``--exit-after`` goal is met or a
    delivery fails verification in that mode (``failure`` says why)."""

    def __init__(self, secret: str, *, exit_after: int | None) -> None:
        self.webhook = Webhook(secret)
        self.exit_after = exit_after
        self.seen: set[str] = set()
        self.matched_values: set[int] = set()
        self.failure: str | None = None
        self.done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        headers = dict(request.headers)
        try:
            payload = self.webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError) as error:
            print(f"✘ rejected POST {request.path}: signature check failed: {error}", flush=True)
            if self.exit_after is not None:
                self.failure = f"a webhook failed signature verification ({error})"
                self.done.set()
            return web.Response(status=401, text="bad signature")
        webhook_id = headers.get("webhook-id") or headers.get("Webhook-Id") or "?"
        repeat = webhook_id in self.seen
        self.seen.add(webhook_id)
        print(describe(payload, webhook_id, repeat), flush=True)
        self._count(payload)
        return web.Response(status=204)

    def _count(self, payload: dict[str, Any]) -> None:
        if self.exit_after is None or payload.get("type") != "event.matched":
            return
        value = payload.get("event", {}).get("args", {}).get("value")
        if isinstance(value, str) and value.isdigit() and int(value) in plan.expected_values():
            self.matched_values.add(int(value))
        if len(self.matched_values) >= self.exit_after:
            self.done.set()


async def serve(host: str, port: int, receiver: Receiver) -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"receiver listening on http://{host}:{port}/ (Standard Webhooks verification on)",
          flush=True)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, receiver.done.set)
    try:
        await receiver.done.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--exit-after", type=int, default=None,
                        help="exit 0 after this many verified deliveries of the demo's values")
    args = parser.parse_args(argv)
    secret = os.environ.get("DEMO_SECRET")
    if not secret:
        print("receiver: DEMO_SECRET is not set", file=sys.stderr)
        raise SystemExit(2)
    receiver = Receiver(secret, exit_after=args.exit_after)
    asyncio.run(serve(args.host, args.port, receiver))
    if receiver.failure:
        print(f"receiver: {receiver.failure}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    if args.exit_after is not None and len(receiver.matched_values) >= args.exit_after:
        print(f"receiver: {len(receiver.matched_values)} signed webhooks received and verified "
              f"at {datetime.now(UTC):%H:%M:%S} UTC", flush=True)


if __name__ == "__main__":
    main()

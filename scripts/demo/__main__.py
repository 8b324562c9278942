"""The demo's chain activity: ``python -m scripts.demo [--once] [--timeout S] [--every S]``.

Waits for the devnet at ``RPC_URL``, deploys the token (the trigger was seeded beforehand by
``scripts/run.py`` at the token's deterministic address), mints and sends a few transfers, then:

- interactive: one more transfer every ``--every`` seconds until SIGTERM/SIGINT (exit 0);
- ``--once``: waits; the receiver ends the run when every expected webhook is verified. If that
  has not happened within ``--timeout`` seconds (counted from the start), exit 1 saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import threading
import time

from web3.exceptions import Web3Exception

from scripts.demo import chain, plan
from scripts.ops.rpc import wait_for_node


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _say(message: str) -> None:
    print(message, flush=True)


def run(rpc_url: str, *, once: bool, timeout: float, every: float) -> int:
    started = time.monotonic()
    stop = _stop_event()
    try:
        asyncio.run(wait_for_node(rpc_url, within=min(timeout, 30)))
    except TimeoutError as error:
        print(f"demo: {error}", file=sys.stderr, flush=True)
        return 1
    w3 = chain.connect(rpc_url)
    token = chain.deploy_token(w3)
    _say(f"deployed OpenZeppelin ERC20PresetMinterPauser {plan.TOKEN_SYMBOL} at {token.address}")
    _say(f"trigger {plan.TRIGGER_NAME!r}: Transfer with value >= {plan.THRESHOLD_TOKENS:,} "
         f"{plan.TOKEN_SYMBOL} → the receiver")
    tx = chain.mint(w3, token, plan.MINT_TOKENS)
    _say(f"minted {plan.MINT_TOKENS:,} {plan.TOKEN_SYMBOL} to {plan.DEPLOYER} (tx {tx[:10]}…)")
    for recipient, tokens in zip(itertools.cycle(plan.RECIPIENTS), plan.TRANSFERS_TOKENS):
        tx = chain.transfer(w3, token, recipient, tokens)
        fires = "fires" if tokens >= plan.THRESHOLD_TOKENS else "below the threshold, no webhook"
        _say(f"sent {tokens:,} {plan.TOKEN_SYMBOL} to {recipient} (tx {tx[:10]}…): {fires}")

    if once:
        remaining = timeout - (time.monotonic() - started)
        _say(f"waiting up to {remaining:.0f} s for {len(plan.expected_values())} verified webhooks")
        if stop.wait(max(0.0, remaining)):
            return 0
        print(f"demo: no complete set of {len(plan.expected_values())} verified webhooks within "
              f"{timeout:.0f} s (see the ingest/processor/workers/receiver lines above)",
              file=sys.stderr, flush=True)
        return 1

    _say(f"sending a transfer every {every:.0f} s; in another terminal try: "
         "python scripts/status.py   (Ctrl-C stops everything)")
    amounts = itertools.cycle((2_000, 300, 1_200, 50))
    recipients = itertools.cycle(plan.RECIPIENTS)
    while not stop.wait(every):
        tokens = next(amounts)
        tx = chain.transfer(w3, token, next(recipients), tokens)
        _say(f"sent {tokens:,} {plan.TOKEN_SYMBOL} (tx {tx[:10]}…)")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--timeout", type=float, default=45.0)
    parser.add_argument("--every", type=float, default=10.0)
    args = parser.parse_args(argv)
    rpc_url = os.environ.get("RPC_URL", "http://127.0.0.1:8545")
    try:
        code = run(rpc_url, once=args.once, timeout=args.timeout, every=args.every)
    except (RuntimeError, Web3Exception, OSError) as error:
        # One line, so `make run --once` can quote it as the reason.
        print(f"demo: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()

"""The common ``main()`` wrapper: one-line errors for permanent failures, exit 0 on signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from core.errors import PermanentError
from core.redact import redact_urls_in


def run_service(name: str, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` until it returns; SIGTERM/SIGINT set ``stop`` (exit 0 once ``main``
    has finished its current unit of work). A ``PermanentError`` exits 1 with one line, with
    any URL in it redacted."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except PermanentError as error:
        print(f"{name}: {redact_urls_in(str(error))}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass

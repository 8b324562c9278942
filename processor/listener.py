"""The LISTEN connection: wake-ups only, never the record.

A dedicated asyncpg connection LISTENs on the events, triggers, reorgs and checkpoints channels
and turns notifications into reasons on a :class:`Wakeups`. Notifications sent while it is not
connected are lost by design, so every (re)connection posts ``"reconnected"``, which makes the
service reload the registry and sweep everything. A lost connection (``pg_terminate_backend``,
server restart, dead network) is noticed by asyncpg's termination callback or, at the latest, by
a periodic ping; it is re-established with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from core.backoff import Backoff
from core.channels import CHANNEL_CHECKPOINTS, CHANNEL_EVENTS, CHANNEL_REORGS, CHANNEL_TRIGGERS
from core.db import asyncpg_dsn, timeout_settings

log = structlog.get_logger(__name__)

CHANNEL_REASONS = {
    CHANNEL_EVENTS: "events",
    CHANNEL_TRIGGERS: "triggers",
    CHANNEL_REORGS: "reorgs",
    CHANNEL_CHECKPOINTS: "checkpoints",
}
APPLICATION_NAME = "blockhook-processor-listener"


class Wakeups:
    """Reasons to look at the database again, collected until the service takes them."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._reasons: set[str] = set()

    def post(self, reason: str) -> None:
        self._reasons.add(reason)
        self._event.set()

    def pending(self, reason: str) -> bool:
        """Whether ``reason`` was posted and not yet taken (lets long work yield early)."""
        return reason in self._reasons

    async def take(self, wait_seconds: float) -> set[str]:
        """Wait up to ``wait_seconds`` for a reason; return (and clear) all posted ones."""
        if not self._reasons:
            try:
                await asyncio.wait_for(self._event.wait(), wait_seconds)
            except TimeoutError:
                pass
        reasons, self._reasons = self._reasons, set()
        self._event.clear()
        return reasons


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def listen(database_url: str, wakeups: Wakeups, stop: asyncio.Event, *,
                 ping_interval: float = 2.0) -> None:
    """Keep a LISTEN connection up until ``stop`` is set, posting reasons to ``wakeups``."""
    backoff = Backoff()
    dsn = asyncpg_dsn(database_url)

    def on_notify(_conn: object, _pid: int, channel: str, _payload: str) -> None:
        wakeups.post(CHANNEL_REASONS.get(channel, "events"))

    while not stop.is_set():
        try:
            conn = await asyncpg.connect(dsn, timeout=5, server_settings={
                "application_name": APPLICATION_NAME, **timeout_settings()})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            delay = backoff.next_delay()
            log.warning("listener cannot connect, retrying", error=str(error) or repr(error),
                        retry_in=round(delay, 2))
            await sleep_or_stop(stop, delay)
            continue
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
        try:
            for channel in CHANNEL_REASONS:
                await conn.add_listener(channel, on_notify)
            log.info("listening", channels=sorted(CHANNEL_REASONS), attempt=backoff.attempt)
            backoff.reset()
            wakeups.post("reconnected")
            await _watch(conn, lost, stop, ping_interval)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.warning("listener connection lost", error=str(error))
        except Exception:
            # Never deaf for good: whatever went wrong, a fresh connection (and the full sweep
            # its "reconnected" wake-up brings) is the cure.
            log.exception("listener failed unexpectedly, reconnecting")
        finally:
            if not conn.is_closed():
                conn.terminate()
        if not stop.is_set():
            log.warning("listener disconnected, reconnecting")
            await sleep_or_stop(stop, backoff.next_delay())


async def _watch(conn: asyncpg.Connection, lost: asyncio.Event, stop: asyncio.Event,
                 ping_interval: float) -> None:
    """Return when the connection is gone (or ``stop``); a failed ping raises."""
    while not stop.is_set() and not lost.is_set() and not conn.is_closed():
        waiters = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(stop.wait())]
        _, pending = await asyncio.wait(waiters, timeout=ping_interval,
                                        return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        if stop.is_set() or lost.is_set() or conn.is_closed():
            return
        # A half-open TCP connection (server host gone) gives no termination callback.
        await conn.fetchval("SELECT 1", timeout=5)

"""Seals webhook secrets as soon as they are written: a daemon thread of every worker process.

The database moves each secret users write into ``actions.secret`` in plaintext and NOTIFYs
``blockhook_secrets``; this thread LISTENs there and runs :func:`core.sealing.seal_secrets` on
every wake-up, at start, and every ``interval`` seconds (NOTIFY is a wake-up, not the record:
a secret written while no worker ran is sealed when one starts). It also drops previous
secrets whose rotation window has ended. Without an encryption key it only does the latter.

Its own autocommit psycopg connection, reconnected with backoff after any error (a database
error quietly, anything else with its traceback; :mod:`workers.loops` covers the thread's
death); sealing is idempotent and claims rows with ``SKIP LOCKED``, so any number of workers may
run it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from core.backoff import backoff_delay
from core.channels import CHANNEL_SECRETS
from core.crypto import Keyring
from core.sealing import SealReport, expire_previous_secrets, seal_secrets
from workers.loops import BackgroundLoop

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_SECONDS = 30.0
APPLICATION_NAME = "blockhook-sealer"
# How often the thread looks at its stop flag while waiting for notifications.
POLL_SECONDS = 0.5


def seal_once(conn: psycopg.Connection[Any], keyring: Keyring | None) -> SealReport:
    """One sweep: seal plaintext secrets (with a keyring), drop expired previous secrets."""
    if keyring is None:
        return SealReport(expired=expire_previous_secrets(conn))
    report = seal_secrets(conn, keyring)
    if report.sealed or report.unreadable:
        log.info("webhook secrets sealed", sealed=report.sealed, unreadable=report.unreadable,
                 key_id=keyring.current_id)
    return report


class Sealer(BackgroundLoop):
    """``start()`` the thread, ``stop()`` it (returns once its current sweep is done)."""

    name = "sealer"

    def __init__(self, database_url: str, keyring: Keyring | None, *,
                 interval: float = SWEEP_INTERVAL_SECONDS, session_options: str = "",
                 on_death: Callable[[str], None] | None = None) -> None:
        super().__init__(interval=interval, on_death=on_death)
        self.database_url = database_url
        self.keyring = keyring
        # libpq ``options`` (``-c statement_timeout=…``): core.db.timeout_settings as flags.
        self.session_options = session_options

    def serve(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=10,
                                     application_name=APPLICATION_NAME,
                                     options=self.session_options) as conn:
                    if self.keyring is not None:
                        conn.execute(f"LISTEN {CHANNEL_SECRETS}")
                    attempt = 0
                    self._serve(conn)
            except Exception as error:
                attempt += 1
                delay = backoff_delay(attempt, base=1.0, cap=self.interval)
                if isinstance(error, psycopg.Error):
                    log.warning("sealer cannot reach the database, retrying",
                                error=str(error).strip().splitlines()[0] if str(error) else
                                type(error).__name__, retry_in=round(delay, 2))
                else:
                    log.exception("sealer failed, retrying", retry_in=round(delay, 2))
                self.wait(delay)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        seal_once(conn, self.keyring)
        next_sweep = time.monotonic() + self.interval
        while not self.stopping:
            woken = any(True for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1))
            if woken or time.monotonic() >= next_sweep:
                seal_once(conn, self.keyring)
                next_sweep = time.monotonic() + self.interval

"""The test's window into a running pipeline: blockhook's tables read back with plain SQL, triggers
written as a user would write them (docs/reference.md, Triggers and actions), and bounded waits whose failure messages name what
is missing (event keys, ``webhook-id``s, delivery rows) and show the services' state and logs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.e2e.chain import ChainLog
from tests.e2e.receiver import Receiver
from tests.e2e.supervisor import Supervisor

CHAIN_ID = 31337
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes, as docs/reference.md shows

EventKey = tuple[str, int]  # (block hash, log index)


@dataclass(frozen=True)
class Hook:
    """A trigger with one webhook action, as inserted."""

    trigger_id: int
    action_id: int
    name: str


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    action_id: int
    trigger_id: int
    event_id: int
    kind: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    event_key: EventKey

    @property
    def webhook_id(self) -> str:
        return f"dlv_{self.id}"

    def describe(self) -> str:
        return (f"{self.webhook_id} ({self.kind}, action {self.action_id}, event {self.event_id} "
                f"at {self.event_key[0][:10]}…#{self.event_key[1]}): {self.status}, "
                f"attempts={self.attempts}, code={self.last_status_code}, error={self.last_error!r}")


class Store:
    """Blockhook's tables seen through short-lived connections (they survive a server restart)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                             connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def execute(self, sql: str, *params: Any) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql, params)  # type: ignore[arg-type]

    # ------------------------------------------------------------- writing triggers

    def add_hook(self, name: str, *, signature: str, url: str, address: str | None = None,
                 conditions: dict[str, Any] | None = None, confirmations: int = 0,
                 secret: str = SECRET, chain_id: int = CHAIN_ID) -> Hook:
        """Insert a trigger and its webhook action in one statement, exactly as docs/reference.md shows."""
        row = self.rows(
            """WITH t AS (
                 INSERT INTO triggers (name, chain_id, address, event_signature, conditions,
                                       confirmations)
                 VALUES (%s, %s, %s, %s, %s, %s) RETURNING id)
               INSERT INTO actions (trigger_id, type, config)
               SELECT id, 'webhook', %s FROM t RETURNING id, trigger_id""",
            name, chain_id, address, signature, None if conditions is None else Jsonb(conditions),
            confirmations, Jsonb({"url": url, "secret": secret}))[0]
        return Hook(trigger_id=row["trigger_id"], action_id=row["id"], name=name)

    # ------------------------------------------------------------- reading back

    def checkpoint(self, chain_id: int = CHAIN_ID) -> int | None:
        found = self.rows("SELECT block_number FROM checkpoints WHERE chain_id = %s", chain_id)
        return int(found[0]["block_number"]) if found else None

    def event_keys(self, *, invalidated: bool | None = False) -> Counter[EventKey]:
        """How many times each (block hash, log index) is stored (``None``: all rows)."""
        rows = self.rows("SELECT block_hash, log_index, invalidated FROM events WHERE chain_id = %s",
                         CHAIN_ID)
        return Counter((r["block_hash"], r["log_index"]) for r in rows
                       if invalidated is None or r["invalidated"] is invalidated)

    def event_ids(self) -> dict[EventKey, int]:
        rows = self.rows("SELECT id, block_hash, log_index FROM events WHERE chain_id = %s", CHAIN_ID)
        return {(r["block_hash"], r["log_index"]): r["id"] for r in rows}

    def deliveries(self) -> list[DeliveryRow]:
        rows = self.rows(
            """SELECT d.id, d.action_id, d.trigger_id, d.event_id, d.kind, d.status, d.attempts,
                      d.last_status_code, d.last_error, e.block_hash, e.log_index
               FROM deliveries d JOIN events e ON e.id = d.event_id ORDER BY d.id""")
        return [DeliveryRow(id=r["id"], action_id=r["action_id"], trigger_id=r["trigger_id"],
                            event_id=r["event_id"], kind=r["kind"], status=r["status"],
                            attempts=r["attempts"], last_status_code=r["last_status_code"],
                            last_error=r["last_error"], event_key=(r["block_hash"], r["log_index"]))
                for r in rows]

    def trigger_errors(self) -> dict[str, str | None]:
        return {r["name"]: r["error"] for r in self.rows("SELECT name, error FROM triggers")}


# ----------------------------------------------------------------- bounded waits


class WaitTimeout(AssertionError):
    """A bounded wait ran out: what was awaited never happened (the message says what is
    missing). Distinct from ``ServiceExited``, a service dying on its own."""


def wait_until(check: Callable[[], tuple[bool, str]], *, timeout: float, what: str,
               supervisor: Supervisor | None = None, interval: float = 0.25) -> None:
    """Poll ``check`` (→ done, progress) until done; on timeout fail with ``what``, the last
    progress (which names what is missing) and the services' state and log tails. A service
    that exits on its own while we wait fails the wait at once."""
    deadline = time.monotonic() + timeout
    progress = "(not checked yet)"
    while True:
        try:
            done, progress = check()
        except psycopg.OperationalError as error:  # the database may be restarting on purpose
            done, progress = False, f"database unreachable: {error}"
        if done:
            return
        if supervisor is not None:
            supervisor.assert_running()
        if time.monotonic() > deadline:
            report = f"\n{supervisor.report()}" if supervisor else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}: {progress}{report}")
        time.sleep(interval)


def _first(items: Iterable[Any], count: int = 8) -> str:
    listed = list(items)
    shown = ", ".join(str(item) for item in listed[:count])
    return shown + (f" … (+{len(listed) - count} more)" if len(listed) > count else "")


def wait_ingested(store: Store, logs: list[ChainLog], *, head: int, timeout: float,
                  supervisor: Supervisor | None = None) -> None:
    """Wait until the checkpoint reaches ``head`` and every log of ``logs`` is stored."""
    expected = {log.key for log in logs}

    def check() -> tuple[bool, str]:
        checkpoint = store.checkpoint()
        missing = expected - set(store.event_keys())
        done = checkpoint is not None and checkpoint >= head and not missing
        return done, (f"checkpoint {checkpoint} (want ≥ {head}); {len(missing)} of {len(expected)} "
                      f"chain logs not stored: {_first(sorted(missing))}")

    wait_until(check, timeout=timeout, what=f"ingest up to block {head}", supervisor=supervisor)


def assert_stored_exactly_once(store: Store, logs: list[ChainLog]) -> None:
    """Guarantee 1: the valid events are exactly the chain's logs, each stored once, and no
    row at all (valid or invalidated) is duplicated."""
    expected = Counter(log.key for log in logs)
    valid = store.event_keys(invalidated=False)
    duplicated = {key: n for key, n in store.event_keys(invalidated=None).items() if n > 1}
    assert not duplicated, f"events stored more than once: {_first(duplicated.items())}"
    missing, extra = set(expected) - set(valid), set(valid) - set(expected)
    assert not missing and not extra, (f"events differ from the chain: missing {_first(sorted(missing))}; "
                                       f"not on the chain {_first(sorted(extra))}")


Wanted = set[tuple[int, str, EventKey]]  # (action id, kind, event key)


def wait_deliveries(store: Store, wanted: Wanted, *, status: str = "delivered", timeout: float,
                    supervisor: Supervisor | None = None) -> list[DeliveryRow]:
    """Wait until each wanted (action, kind, event) has a delivery row in ``status``; name the
    missing pairs and the rows that are stuck. Returns all delivery rows at that moment."""
    rows: list[DeliveryRow] = []

    def check() -> tuple[bool, str]:
        nonlocal rows
        rows = store.deliveries()
        by_pair = {(r.action_id, r.kind, r.event_key): r for r in rows}
        absent = sorted(pair for pair in wanted if pair not in by_pair)
        stuck = [by_pair[pair] for pair in wanted if pair in by_pair
                 and by_pair[pair].status != status]
        done = not absent and not stuck
        return done, (f"{len(absent)} wanted deliveries have no row: {_first(absent)}; "
                      f"{len(stuck)} rows not {status}: {_first(r.describe() for r in stuck)}")

    wait_until(check, timeout=timeout, what=f"{len(wanted)} deliveries to be {status}",
               supervisor=supervisor)
    return rows


def wait_received(receiver: Receiver, webhook_ids: set[str], *, timeout: float,
                  supervisor: Supervisor | None = None) -> list[dict[str, Any]]:
    """Wait until every ``webhook_id`` has reached the receiver with a verified signature and
    a 2xx answer; return everything received."""
    received: list[dict[str, Any]] = []

    def check() -> tuple[bool, str]:
        nonlocal received
        received = receiver.received()
        ok = {r["webhook_id"] for r in received if r["verified"] and r["status"] < 300}
        missing = sorted(webhook_ids - ok)
        return not missing, f"{len(missing)} webhook-ids not received: {_first(missing)}"

    wait_until(check, timeout=timeout, what=f"{len(webhook_ids)} webhooks at the receiver",
               supervisor=supervisor)
    return received


def assert_no_duplicate_rows(rows: list[DeliveryRow]) -> None:
    """Guarantee 3: at most one delivery per (action, event, kind)."""
    counts = Counter((r.action_id, r.event_id, r.kind) for r in rows)
    duplicated = {pair: n for pair, n in counts.items() if n > 1}
    assert not duplicated, f"delivery rows duplicated: {_first(duplicated.items())}"


def assert_all_verified(received: list[dict[str, Any]]) -> None:
    bad = [r for r in received if not r["verified"]]
    assert not bad, f"POSTs failing Standard Webhooks verification: {_first((r['webhook_id'], r.get('error')) for r in bad)}"


def expected_payload_event(log: ChainLog) -> dict[str, Any]:
    """The webhook's ``event`` object (docs/reference.md) for a chain log, built from web3's decoding (minus ``signature``
    and ``block_time``, which the caller checks separately)."""
    return {"chain_id": CHAIN_ID, "block_number": log.block_number, "block_hash": log.block_hash,
            "tx_hash": log.tx_hash, "tx_index": log.tx_index, "log_index": log.log_index,
            "address": log.address, "name": log.name, "args": log.json_args()}

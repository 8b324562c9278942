"""One delivery attempt: from a claimed row to an :class:`~workers.store.Outcome`.

Pure with respect to the database (the batch records outcomes); the HTTP call goes through
:class:`~workers.delivery.WebhookClient`. Order of checks: disabled action/trigger → cancelled;
missing event → failed; ``matched`` of an invalidated event → cancelled (never sent); invalid
config, refused target or undecodable event → failed; otherwise the POST decides.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import asyncpg
import structlog
from yarl import URL

from core.crypto import Keyring
from core.errors import (
    EndpointRejected,
    EndpointUnavailable,
    PermanentError,
    SecretCorrupt,
    SecretUnavailable,
)
from workers import metrics
from workers.action import parse_action
from workers.delivery import WebhookClient
from workers.payload import build_payload
from workers.retry import Verdict, classify_status, is_exhausted, parse_retry_after, retry_delay
from workers.signing import (
    action_secrets,
    decode_secrets,
    signed_headers,
    static_headers,
    webhook_id,
)
from workers.store import Outcome

log = structlog.get_logger(__name__)

_ATTEMPTS_DELIVERED = metrics.ATTEMPTS.labels("delivered")  # labelled once: the hot path


@dataclass(frozen=True)
class RetryPolicy:
    schedule: Sequence[float]
    max_attempts: int
    default_timeout: float


class _EventColumns:
    """The event's columns of a claimed row, as ``build_payload`` reads them (``id`` is the
    row's ``event_id``), without copying the whole row into a dict per delivery."""

    __slots__ = ("_row",)

    def __init__(self, row: asyncpg.Record) -> None:
        self._row = row

    def __getitem__(self, name: str) -> Any:
        return self._row["event_id" if name == "id" else name]


@lru_cache(maxsize=1024)
def _static_headers(config_json: str) -> dict[str, str]:
    """The action's headers that are the same on every attempt, by config text (as
    :func:`parse_action`, which has accepted this text before it is called). Never mutated."""
    return static_headers(parse_action(config_json).headers)


def _host(url: str) -> str:
    try:
        return URL(url).host or "?"
    except (TypeError, ValueError):
        return "?"


def _scrub(text: str, *secrets: str | None) -> str:
    """Remove secrets an endpoint may echo back (its body becomes ``last_error``)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def _retry_or_fail(row: asyncpg.Record, policy: RetryPolicy, *, jitter: float, error: str,
                   status_code: int | None, retry_after: float | None) -> Outcome:
    attempts = row["attempts"] + 1
    if is_exhausted(attempts=attempts, max_attempts=policy.max_attempts):
        metrics.ATTEMPTS.labels("failed").inc()
        metrics.FAILED.inc()
        return Outcome(row["id"], "failed", True, status_code,
                       f"gave up after {attempts} attempts: {error}")
    delay = retry_delay(attempts=attempts, schedule=policy.schedule, jitter=jitter,
                        retry_after=retry_after)
    metrics.ATTEMPTS.labels("retry").inc()
    return Outcome(row["id"], "queued", True, status_code, error, delay)


def _fail(row: asyncpg.Record, error: str, *, status_code: int | None = None,
          outcome: str = "failed") -> Outcome:
    metrics.ATTEMPTS.labels(outcome).inc()
    metrics.FAILED.inc()
    return Outcome(row["id"], "failed", True, status_code, error)


def _cancel(row: asyncpg.Record, reason: str) -> Outcome:
    metrics.CANCELLED.inc()
    return Outcome(row["id"], "cancelled", False, error=reason)


async def attempt_delivery(row: asyncpg.Record, *, client: WebhookClient, policy: RetryPolicy,
                           jitter: float, keyring: Keyring | None = None) -> Outcome:
    """Handle one claimed delivery and say what became of it. Never raises for anything the
    endpoint or the row's contents can cause. ``keyring`` opens sealed secrets; a secret
    sealed under a key it lacks is retried on the schedule (another worker, or this one after a
    restart with the key, can send it), a corrupt one fails the delivery."""
    if not row["enabled"]:
        return _cancel(row, "action or trigger disabled before sending")
    if not row["event_found"]:
        return _fail(row, f"event {row['event_id']} not found")
    if row["kind"] == "matched" and row["invalidated"]:
        return _cancel(row, "event invalidated by a chain reorganisation before sending")
    try:
        action = parse_action(row["config"])
    except EndpointRejected as error:  # its message never echoes the config's values
        log.warning("delivery cannot be built", delivery_id=row["id"], reason=str(error))
        return _fail(row, str(error), outcome="refused")
    try:
        secrets = action_secrets(row["action_id"], row["secret"], row["previous_secret"], keyring)
        keys = decode_secrets(secrets)
    except SecretUnavailable as error:
        log.warning("delivery waits for a key to open its secret", delivery_id=row["id"],
                    reason=str(error))
        return _retry_or_fail(row, policy, jitter=jitter, error=str(error), status_code=None,
                              retry_after=None)
    except (SecretCorrupt, ValueError) as error:  # messages never contain the secret
        log.warning("delivery cannot be signed", delivery_id=row["id"], reason=str(error))
        return _fail(row, f"webhook secret: {error}", outcome="refused")
    try:
        body = build_payload(delivery_id=row["id"], kind=row["kind"], replay=row["replay"],
                             trigger_id=row["trigger_id"], trigger_name=row["trigger_name"],
                             event_signature=row["event_signature"], event=_EventColumns(row))
        headers = signed_headers(_static_headers(row["config"]), msg_id=webhook_id(row["id"]),
                                 timestamp=int(time.time()), body=body, keys=keys)
        response = await client.post(action.url, body=body, headers=headers,
                                     timeout_seconds=action.timeout or policy.default_timeout)
    except EndpointRejected as error:
        reason = _scrub(str(error), *secrets, *action.headers.values())
        log.warning("delivery refused", delivery_id=row["id"], reason=reason)
        return _fail(row, reason, outcome="refused")
    except PermanentError as error:
        log.warning("delivery cannot be built", delivery_id=row["id"], reason=str(error))
        return _fail(row, str(error), outcome="refused")
    except EndpointUnavailable as error:
        log.info("delivery attempt failed", delivery_id=row["id"], host=_host(action.url),
                 reason=str(error), attempt=row["attempts"] + 1)
        return replace(_retry_or_fail(row, policy, jitter=jitter, error=str(error),
                                      status_code=None, retry_after=None), endpoint_ok=False)
    except Exception as error:  # a bug must not lose the batch's other outcomes
        log.exception("delivery attempt crashed", delivery_id=row["id"])
        return _retry_or_fail(row, policy, jitter=jitter, status_code=None, retry_after=None,
                              error=f"internal error: {type(error).__name__}")

    metrics.ENDPOINT_RESPONSE.observe(response.elapsed)
    verdict = classify_status(response.status)
    if verdict is Verdict.DELIVERED:
        _ATTEMPTS_DELIVERED.inc()
        return Outcome(row["id"], "delivered", True, response.status, endpoint_ok=True)
    excerpt = _scrub(response.excerpt, *secrets, *action.headers.values())
    reason = f"HTTP {response.status}" + (f": {excerpt}" if excerpt else "")
    if verdict is Verdict.FAILED:
        log.info("delivery rejected", delivery_id=row["id"], status_code=response.status,
                 host=_host(action.url))
        return replace(_fail(row, reason, status_code=response.status), endpoint_ok=True)
    log.info("delivery attempt failed", delivery_id=row["id"], status_code=response.status,
             host=_host(action.url), attempt=row["attempts"] + 1)
    return replace(_retry_or_fail(row, policy, jitter=jitter, error=reason,
                                  status_code=response.status,
                                  retry_after=parse_retry_after(response.retry_after)),
                   endpoint_ok=False)

"""Pure parts: retry maths, Retry-After parsing, signing against the standardwebhooks library,
secret and config validation."""

from __future__ import annotations

import base64
import email.utils
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from core.errors import EndpointRejected
from workers.action import parse_action
from workers.retry import Verdict, classify_status, parse_retry_after, retry_delay
from workers.signing import decode_secret, sign, webhook_headers, webhook_id


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.DELIVERED), (204, Verdict.DELIVERED), (299, Verdict.DELIVERED),
    (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY),
    (599, Verdict.RETRY), (400, Verdict.FAILED), (401, Verdict.FAILED), (404, Verdict.FAILED),
    (410, Verdict.FAILED), (301, Verdict.FAILED), (307, Verdict.FAILED), (100, Verdict.FAILED),
])
def test_status_classification(status: int, verdict: Verdict) -> None:
    assert classify_status(status) is verdict


def test_retry_delay_follows_schedule_with_bounded_jitter_and_repeats_last_entry() -> None:
    schedule = [5.0, 30.0, 120.0]
    assert retry_delay(attempts=1, schedule=schedule, jitter=0.0) == 5.0
    assert retry_delay(attempts=2, schedule=schedule, jitter=1.0) == pytest.approx(36.0)
    assert retry_delay(attempts=7, schedule=schedule, jitter=0.5) == pytest.approx(132.0)
    assert retry_delay(attempts=1, schedule=schedule, jitter=0.0, retry_after=60) == 60.0
    assert retry_delay(attempts=2, schedule=schedule, jitter=0.0, retry_after=1) == 30.0
    assert retry_delay(attempts=1, schedule=schedule, jitter=0.0, retry_after=10**9) == 6 * 3600


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()
    date = email.utils.format_datetime(datetime(2026, 11, 25, 12, 1, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(date, now=now) == 90.0
    assert parse_retry_after(email.utils.format_datetime(datetime(2020, 1, 1, tzinfo=UTC),
                                                         usegmt=True), now=now) == 0.0


def test_signature_matches_the_standardwebhooks_reference_implementation() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"event.matched","delivery_id":42}'
    ours = sign(decode_secret(secret), msg_id="dlv_42", timestamp=1614265330, body=body)
    reference = Webhook(secret).sign("dlv_42", datetime.fromtimestamp(1614265330, UTC),
                                     body.decode())
    assert ours == reference
    assert webhook_id(42) == "dlv_42"


def test_unpadded_secret_is_accepted_like_the_reference() -> None:
    key = b"0123456789abcdefg"
    unpadded = "whsec_" + base64.b64encode(key).decode().rstrip("=")
    assert decode_secret(unpadded) == key


@pytest.mark.parametrize("secret", ["4wJzMj6MK/kEVNjR9l7", "whsec_", "whsec_***", "whsec_a b"])
def test_bad_secrets_are_rejected_without_echoing_them(secret: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode_secret(secret)
    assert "secret" in str(caught.value)
    if len(secret) > 8:
        assert secret not in str(caught.value)


def test_reserved_headers_cannot_be_overridden_in_any_case() -> None:
    headers = webhook_headers(msg_id="dlv_1", timestamp=1, body=b"{}", keys=[b"k"], extra={
        "Webhook-ID": "x", "WEBHOOK-TIMESTAMP": "2", "webhook-signature": "v1,x",
        "Content-Type": "text/plain", "Host": "evil", "X-Custom": "kept"})
    assert {k.lower(): v for k, v in headers.items()} == {
        "webhook-id": "dlv_1", "webhook-timestamp": "1",
        "webhook-signature": sign(b"k", msg_id="dlv_1", timestamp=1, body=b"{}"),
        "content-type": "application/json", "x-custom": "kept"}


def test_invalid_configs_name_the_field() -> None:
    with pytest.raises(EndpointRejected, match="url"):
        parse_action('{"headers": {}}')
    with pytest.raises(EndpointRejected, match="timeout"):
        parse_action('{"url": "https://example.com", "timeout": -1}')
    with pytest.raises(EndpointRejected, match="headers"):
        parse_action('{"url": "https://example.com", "headers": {"a": 1}}')


def test_lost_connection_futures_are_a_warning_and_other_errors_reach_the_default_handler() -> None:
    import asyncio

    from workers.runtime import _quiet_lost_connections

    loop = asyncio.new_event_loop()
    seen: list[dict[str, object]] = []
    loop.default_exception_handler = seen.append  # type: ignore[method-assign]
    try:
        _quiet_lost_connections(loop, {"exception": ConnectionError("unexpected connection_lost() call")})
        assert seen == []
        other = {"exception": RuntimeError("a bug")}
        _quiet_lost_connections(loop, other)
        assert seen == [other]
    finally:
        loop.close()


def test_the_delivery_pool_caches_generic_plans_and_keeps_the_timeouts(
        plain_db_url: str, redis_url: str) -> None:
    """Delivery statements look rows up by id: no hypertable chunk a custom plan could prune,
    so the workers' pool lets Postgres cache a generic plan (``auto``) instead of planning the
    claim afresh on every call like the other services' sessions (``force_custom_plan``)."""
    from tests.workers.conftest import make_settings
    from workers.runtime import Runtime

    runtime = Runtime.start(make_settings(plain_db_url, redis_url))
    try:
        async def settings() -> tuple[str, str]:
            async with runtime.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT current_setting('plan_cache_mode') AS mode, "
                                          "current_setting('statement_timeout') AS timeout")
                return row["mode"], row["timeout"]

        assert runtime._run(settings()) == ("auto", "1min")
    finally:
        runtime.close(timeout=5)

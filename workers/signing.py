"""Standard Webhooks signing (https://www.standardwebhooks.com).

``webhook-id`` is ``dlv_<delivery id>``: derived from the row, so it is the same on every retry
and distinct for a ``matched`` and its ``removed`` delivery. ``webhook-timestamp`` is the unix
time of the attempt. ``webhook-signature`` is ``v1,`` + base64 HMAC-SHA256 over
``{id}.{timestamp}.{body}`` keyed with the base64-decoded part of the ``whsec_`` secret.

An action without a secret is sent unsigned: ``webhook-id`` and ``webhook-timestamp`` are still
present, ``webhook-signature`` is absent (SPEC §4 makes the secret optional; a receiver that
requires signatures rejects such a request, which is the honest outcome).

During an endpoint secret rotation an action holds two secrets (``actions.secret`` and, until
``previous_secret_expires_at``, ``previous_secret``): the header then carries one signature per
secret, space-separated, as Standard Webhooks allows, so a receiver verifying with either secret
accepts the request. Stored secrets may be sealed (``enc:v1``); :func:`action_secrets` opens them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Final

from core.crypto import Keyring, reveal

SECRET_PREFIX: Final = "whsec_"

# Headers an action's ``headers`` may not set (compared case-insensitively): the signature
# contract, and framing headers whose override would corrupt the request.
RESERVED_HEADERS: Final = frozenset({
    "webhook-id", "webhook-timestamp", "webhook-signature",
    "content-type", "content-length", "transfer-encoding", "host",
})


def webhook_id(delivery_id: int) -> str:
    """The ``webhook-id`` of a delivery, stable across its retries."""
    return f"dlv_{delivery_id}"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret. Raises ``ValueError`` with a message that
    never contains the secret itself."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("secret must start with 'whsec_'")
    encoded = secret[len(SECRET_PREFIX):]
    try:
        # Standard Webhooks libraries accept unpadded base64; so do we.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret after 'whsec_' is not valid base64") from None
    if not key:
        raise ValueError("secret is empty")
    return key


@lru_cache(maxsize=4096)
def decode_secrets(secrets: tuple[str, ...]) -> tuple[bytes, ...]:
    """:func:`decode_secret` of each, cached (the same action's secrets sign every delivery)."""
    return tuple(decode_secret(secret) for secret in secrets)


@lru_cache(maxsize=4096)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``key`` and fed nothing: copied per signature, so the key
    schedule is computed once per secret (cheaper than ``hmac.digest``, which keys OpenSSL's
    HMAC again on every call)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def sign(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    mac = _keyed(key).copy()
    mac.update(b"%s.%d.%s" % (msg_id.encode(), timestamp, body))
    return "v1," + base64.b64encode(mac.digest()).decode()


def static_headers(extra: Mapping[str, str]) -> dict[str, str]:
    """The headers of an action that are the same on every attempt: ``extra`` (its
    ``headers``) without the reserved ones, whatever their case, and the content type.
    Computed once per action by callers on the hot path (:func:`signed_headers`)."""
    headers = {name: value for name, value in extra.items()
               if name.lower() not in RESERVED_HEADERS}
    headers["content-type"] = "application/json"
    return headers


def signed_headers(static: Mapping[str, str], *, msg_id: str, timestamp: int, body: bytes,
                   keys: Sequence[bytes]) -> dict[str, str]:
    """``static`` (:func:`static_headers`) plus this attempt's ``webhook-*`` headers, signed
    with each of ``keys`` (none: unsigned)."""
    headers = dict(static)
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(timestamp)
    if keys:
        headers["webhook-signature"] = " ".join(
            [sign(key, msg_id=msg_id, timestamp=timestamp, body=body) for key in keys])
    return headers


@lru_cache(maxsize=4096)
def action_secrets(action_id: int, secret: str | None, previous_secret: str | None,
                   keyring: Keyring | None) -> tuple[str, ...]:
    """The plaintext ``whsec_`` secrets to sign with, current first, without repeats. Raises
    ``SecretUnavailable`` (sealed under a key this process lacks) or ``SecretCorrupt``. Cached
    by the stored values: a rotation or a reseal stores new ones."""
    secrets = [reveal(value, action_id=action_id, keyring=keyring)
               for value in (secret, previous_secret) if value is not None]
    return tuple(dict.fromkeys(secrets))


def webhook_headers(*, msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes],
                    extra: Mapping[str, str]) -> dict[str, str]:
    """All request headers of one attempt, signed with each of ``keys`` (none: unsigned).
    ``extra`` (the action's ``headers``) is added first and can never replace a reserved
    header, whatever its case."""
    return signed_headers(static_headers(extra), msg_id=msg_id, timestamp=timestamp, body=body,
                          keys=keys)

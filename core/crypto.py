"""Webhook secrets at rest: AES-256-GCM envelopes under a keyring of one current key and any
number of older keys still accepted for reading.

Envelope: ``enc:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>``. The key id is the first
8 hex digits of the key's SHA-256, so a reader picks the right key without trying each one and a
rotation can tell what is still sealed under an old key. The nonce is 12 random bytes per seal.
The associated data binds an envelope to its row (``blockhook:action:<id>``): an envelope copied
onto another action does not open there.

Keys come from ``BLOCKHOOK_ENCRYPTION_KEY`` or ``BLOCKHOOK_ENCRYPTION_KEY_FILE`` (see
:mod:`core.settings`): base64 of 32 random bytes each, comma- or line-separated, the first one
current. Errors never contain key material or plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import SecretCorrupt, SecretUnavailable

ENVELOPE_PREFIX: Final = "enc:"
ENVELOPE_V1: Final = "enc:v1:"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_ENVELOPE = re.compile(r"^enc:v1:(?P<kid>[0-9a-f]{8}):(?P<body>[A-Za-z0-9_-]+)$")
_KEY_SEPARATORS = re.compile(r"[\s,]+")


def is_sealed(value: str | None) -> bool:
    """Whether a stored secret is an envelope (anything else is plaintext awaiting sealing)."""
    return value is not None and value.startswith(ENVELOPE_PREFIX)


def envelope_key_id(value: str) -> str | None:
    """The key id of an envelope, or ``None`` when ``value`` is not a well-formed envelope."""
    match = _ENVELOPE.match(value)
    return match.group("kid") if match else None


def generate_key() -> str:
    """A new key, as it is written in ``BLOCKHOOK_ENCRYPTION_KEY``."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_keys(text: str) -> list[bytes]:
    """Keys from their written form (base64 or base64url, padded or not, separated by commas or
    whitespace; ``#`` starts a comment in a key file). Raises ``ValueError`` naming the position
    of a bad key, never its value."""
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    written = [part for line in lines for part in _KEY_SEPARATORS.split(line) if part]
    if not written:
        raise ValueError("no key given")
    keys = []
    for position, part in enumerate(written, start=1):
        padded = part + "=" * (-len(part) % 4)
        try:
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"key {position} is not base64") from None
        if len(key) != KEY_BYTES:
            raise ValueError(f"key {position} is {len(key)} bytes, not {KEY_BYTES} "
                             f"(generate one with: python scripts/rotate_key.py --generate)")
        keys.append(key)
    return keys


class Keyring:
    """Seals with the current key; opens envelopes of any key it holds."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}
        self.current_id = key_id(keys[0])
        self.key_ids = tuple(self._ciphers)

    @classmethod
    def from_text(cls, text: str) -> Keyring:
        return cls(parse_keys(text))

    def seal(self, plaintext: str, *, context: str) -> str:
        """An envelope of ``plaintext`` under the current key, bound to ``context``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current_id].encrypt(nonce, plaintext.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{ENVELOPE_V1}{self.current_id}:{body}"

    def open(self, envelope: str, *, context: str) -> str:
        """The plaintext of ``envelope``. Raises ``SecretUnavailable`` when the key it was sealed
        with is not in this keyring (a configuration matter: another worker or a restart with
        the right key can open it), ``SecretCorrupt`` when it is malformed, tampered with, or
        bound to another row."""
        match = _ENVELOPE.match(envelope)
        if match is None:
            raise SecretCorrupt("the stored secret is not a valid enc:v1 envelope")
        cipher = self._ciphers.get(match.group("kid"))
        if cipher is None:
            raise SecretUnavailable(
                f"the secret is sealed with key {match.group('kid')}, which is not in "
                f"BLOCKHOOK_ENCRYPTION_KEY (keys here: {', '.join(self.key_ids)})")
        body = match.group("body")
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        try:
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, ValueError):
            raise SecretCorrupt("the stored secret does not decrypt: tampered with, or copied "
                                "from another action") from None

    def is_current(self, value: str) -> bool:
        """Whether ``value`` is an envelope sealed under the current key."""
        return envelope_key_id(value) == self.current_id


def action_context(action_id: int) -> str:
    """The associated data binding a secret's envelope to its ``actions`` row."""
    return f"blockhook:action:{action_id}"


def reveal(value: str, *, action_id: int, keyring: Keyring | None) -> str:
    """The plaintext of a stored secret: envelopes are opened, plaintext (not sealed yet, or no
    key configured) is returned as it is. Raises ``SecretUnavailable`` for an envelope without a
    keyring that holds its key, ``SecretCorrupt`` for one that does not open."""
    if not is_sealed(value):
        return value
    if keyring is None:
        raise SecretUnavailable("the secret is encrypted but BLOCKHOOK_ENCRYPTION_KEY is not set")
    return keyring.open(value, context=action_context(action_id))

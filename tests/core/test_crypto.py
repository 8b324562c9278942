"""Envelopes and keyrings (core/crypto.py) and the key settings: round trips, rotation,
tampering, binding to the row, and errors that never show key material."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.crypto import (
    Keyring,
    action_context,
    envelope_key_id,
    generate_key,
    is_sealed,
    key_id,
    parse_keys,
    reveal,
)
from core.errors import SecretCorrupt, SecretUnavailable
from core.settings import EncryptionSettings, describe_validation_error

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_seal_and_open_round_trip_with_a_fresh_nonce_each_time() -> None:
    keyring = Keyring.from_text(generate_key())
    first = keyring.seal(SECRET, context=action_context(7))
    second = keyring.seal(SECRET, context=action_context(7))
    assert first != second and is_sealed(first)
    assert re.fullmatch(r"enc:v1:[0-9a-f]{8}:[A-Za-z0-9_-]+", first)
    assert envelope_key_id(first) == keyring.current_id
    assert SECRET not in first and SECRET.removeprefix("whsec_") not in first
    assert keyring.open(first, context=action_context(7)) == SECRET
    assert reveal(first, action_id=7, keyring=keyring) == SECRET
    assert reveal(SECRET, action_id=7, keyring=None) == SECRET  # plaintext passes through


def test_an_envelope_opens_only_for_its_own_action_and_untampered() -> None:
    keyring = Keyring.from_text(generate_key())
    sealed = keyring.seal(SECRET, context=action_context(7))
    with pytest.raises(SecretCorrupt, match="another action"):
        keyring.open(sealed, context=action_context(8))
    body = sealed.rsplit(":", 1)[1]
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(SecretCorrupt):
        keyring.open(sealed.rsplit(":", 1)[0] + ":" + flipped, context=action_context(7))
    with pytest.raises(SecretCorrupt, match="not a valid"):
        keyring.open("enc:v1:zz", context=action_context(7))


def test_rotation_keyring_reads_old_and_new_and_seals_with_the_first() -> None:
    old, new = generate_key(), generate_key()
    before = Keyring.from_text(old).seal(SECRET, context=action_context(1))
    during = Keyring.from_text(f"{new},{old}")
    assert during.open(before, context=action_context(1)) == SECRET
    assert not during.is_current(before)
    resealed = during.seal(SECRET, context=action_context(1))
    assert during.is_current(resealed)
    assert Keyring.from_text(new).open(resealed, context=action_context(1)) == SECRET
    with pytest.raises(SecretUnavailable, match=envelope_key_id(resealed) or "?"):
        Keyring.from_text(old).open(resealed, context=action_context(1))
    with pytest.raises(SecretUnavailable, match="not set"):
        reveal(resealed, action_id=1, keyring=None)


def test_keys_are_read_in_every_written_form() -> None:
    raw = os.urandom(32)
    forms = [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    for form in forms:
        assert parse_keys(form) == [raw]
    other = os.urandom(32)
    text = f"# current\n{forms[0]}\n\n{base64.b64encode(other).decode()}  # old\n"
    assert parse_keys(text) == [raw, other]
    assert Keyring.from_text(text).current_id == key_id(raw)


@pytest.mark.parametrize(("text", "message"), [
    ("", "no key"), ("%%secret%%", "key 2 is not base64"),
    (base64.b64encode(b"short-key-of-secret-material").decode(), "key 2 is 28 bytes"),
])
def test_bad_keys_are_named_by_position_never_by_value(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        parse_keys(f"{generate_key()},{text}" if text else text)
    if text:
        assert text not in str(raised.value)


def test_settings_validate_the_key_and_the_key_file_eagerly(tmp_path: Path) -> None:
    secret_material = base64.b64encode(b"k" * 31).decode()
    with pytest.raises(ValidationError) as raised:
        EncryptionSettings(_env_file=None, blockhook_encryption_key=secret_material)
    line = describe_validation_error(raised.value)
    assert "BLOCKHOOK_ENCRYPTION_KEY: key 1 is 31 bytes" in line and secret_material not in line
    key_file = tmp_path / "key"
    key_file.write_text(generate_key() + "\n")
    settings = EncryptionSettings(_env_file=None, blockhook_encryption_key_file=key_file)
    keyring = settings.keyring()
    assert keyring is not None and secret_material not in repr(settings)
    with pytest.raises(ValidationError, match="cannot read"):
        EncryptionSettings(_env_file=None, blockhook_encryption_key_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="both set"):
        EncryptionSettings(_env_file=None, blockhook_encryption_key=generate_key(),
                           blockhook_encryption_key_file=key_file)
    assert EncryptionSettings(_env_file=None, blockhook_encryption_key="").keyring() is None

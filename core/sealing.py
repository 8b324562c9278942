"""Sealing: encrypt the plaintext webhook secrets in ``actions`` (and, for a key rotation,
re-encrypt those sealed under an older key), in place, while everything keeps running.

Users write plain ``whsec_…`` secrets; the database moves them into ``actions.secret`` (and
NOTIFYs ``blockhook_secrets``). The workers call :func:`seal_secrets` on that wake-up, at start
and periodically; ``scripts/rotate_key.py`` calls it with ``rotate=True``. Rows are claimed
``FOR UPDATE SKIP LOCKED`` in batches of one short transaction each, so several workers and a
rotation can run at once, a user's edit of an action waits milliseconds at most, and every
value is rewritten from what was read under the lock. Sealing only writes the secret columns,
which neither bump ``updated_at`` nor reload the processors.

A value that cannot be opened (sealed under a key not in the keyring, or corrupt) is left as
it is and counted: rotating never destroys a secret it cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg.rows import tuple_row

from core.crypto import ENVELOPE_PREFIX, ENVELOPE_V1, Keyring, action_context, is_sealed
from core.errors import SecretCorrupt, SecretUnavailable

log = structlog.get_logger(__name__)

BATCH_SIZE = 200

_PENDING = """
SELECT id, secret, previous_secret FROM actions
WHERE id > %(after)s
  AND ((secret IS NOT NULL AND secret NOT LIKE %(done)s)
       OR (previous_secret IS NOT NULL AND previous_secret NOT LIKE %(done)s))
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

_WRITE = """
UPDATE actions SET secret = %(secret)s, previous_secret = %(previous)s,
    previous_secret_expires_at = CASE WHEN %(previous)s::text IS NULL THEN NULL
                                      ELSE previous_secret_expires_at END
WHERE id = %(id)s
"""

_EXPIRE = """
UPDATE actions SET previous_secret = NULL, previous_secret_expires_at = NULL
WHERE previous_secret_expires_at <= now()
"""

_BY_KEY = """
SELECT CASE WHEN value LIKE 'enc:v1:%' THEN split_part(value, ':', 3) ELSE 'plaintext' END,
       count(*)
FROM actions, LATERAL (VALUES (secret), (previous_secret)) AS stored(value)
WHERE value IS NOT NULL
GROUP BY 1
"""


@dataclass
class SealReport:
    """What one :func:`seal_secrets` call did."""

    sealed: int = 0  # values encrypted (plaintext) or re-encrypted (rotation)
    unreadable: int = 0  # values left as they were: their key is missing, or they are corrupt
    expired: int = 0  # previous secrets dropped because their rotation window ended


def _resealed(value: str | None, *, action_id: int, keyring: Keyring, rotate: bool,
              report: SealReport) -> str | None:
    if value is None:
        return None
    context = action_context(action_id)
    if not is_sealed(value):
        report.sealed += 1
        return keyring.seal(value, context=context)
    if not rotate or keyring.is_current(value):
        return value
    try:
        plaintext = keyring.open(value, context=context)
    except (SecretUnavailable, SecretCorrupt) as error:
        report.unreadable += 1
        log.warning("secret left as it is", action_id=action_id, reason=str(error))
        return value
    report.sealed += 1
    return keyring.seal(plaintext, context=context)


def _plaintext(value: str | None, *, action_id: int, keyring: Keyring) -> str | None:
    if value is None or not is_sealed(value):
        return value
    try:
        return keyring.open(value, context=action_context(action_id))
    except (SecretUnavailable, SecretCorrupt):
        return None


def _same_secret(secret: str | None, previous: str | None, *, action_id: int,
                 keyring: Keyring) -> bool:
    if secret is None or previous is None:
        return False
    current_text = _plaintext(secret, action_id=action_id, keyring=keyring)
    return current_text is not None and current_text == _plaintext(
        previous, action_id=action_id, keyring=keyring)


def seal_secrets(conn: psycopg.Connection[Any], keyring: Keyring, *, rotate: bool = False,
                 batch_size: int = BATCH_SIZE) -> SealReport:
    """Encrypt every plaintext secret under the current key; with ``rotate``, also re-encrypt
    those sealed under other keys of the keyring. Drops expired previous secrets first, and a
    previous secret equal to the current one (the same secret written again). ``conn`` must be
    in autocommit mode: each batch is its own transaction."""
    report = SealReport(expired=expire_previous_secrets(conn))
    done = f"{ENVELOPE_V1}{keyring.current_id}:%" if rotate else f"{ENVELOPE_PREFIX}%"
    after = 0
    while True:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
            rows = cursor.execute(_PENDING, {"after": after, "done": done,
                                             "limit": batch_size}).fetchall()
            if not rows:
                return report
            writes = []
            for action_id, secret, previous in rows:
                if _same_secret(secret, previous, action_id=action_id, keyring=keyring):
                    previous = None  # not a rotation: the same secret was written again
                writes.append({
                    "id": action_id,
                    "secret": _resealed(secret, action_id=action_id, keyring=keyring,
                                        rotate=rotate, report=report),
                    "previous": _resealed(previous, action_id=action_id, keyring=keyring,
                                          rotate=rotate, report=report)})
            cursor.executemany(_WRITE, writes)
        after = rows[-1][0]


def expire_previous_secrets(conn: psycopg.Connection[Any]) -> int:
    """Drop previous secrets whose rotation window has ended; return how many."""
    return conn.execute(_EXPIRE).rowcount


def secrets_by_key(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """How many stored secrets (current and previous) are plaintext or sealed under each key
    id: ``{"plaintext": 2, "3f9a01c2": 120}``."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        return {key: count for key, count in cursor.execute(_BY_KEY).fetchall()}

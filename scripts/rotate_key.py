"""``python scripts/rotate_key.py [--check | --generate]``: rotate the key that seals webhook
secrets, with the pipeline running.

    python scripts/rotate_key.py --generate      # print a new key (base64 of 32 random bytes)
    BLOCKHOOK_ENCRYPTION_KEY=NEW,OLD python scripts/rotate_key.py           # re-encrypt
    BLOCKHOOK_ENCRYPTION_KEY=NEW,OLD python scripts/rotate_key.py --check   # count, change nothing

The first key of ``BLOCKHOOK_ENCRYPTION_KEY`` (or of ``BLOCKHOOK_ENCRYPTION_KEY_FILE``) is the
current one; the others are accepted for reading. Zero downtime:

1. give every worker ``BLOCKHOOK_ENCRYPTION_KEY=NEW,OLD`` (restart them one by one: while some
   still run with ``OLD`` alone, a secret they cannot open is retried, not lost);
2. run this script with the same value: it re-encrypts every secret not sealed under ``NEW``
   (plaintext ones too), in short batches, while workers keep delivering with either key;
3. once it reports nothing left under other keys, set ``BLOCKHOOK_ENCRYPTION_KEY=NEW``.

Exit 0 when every stored secret is sealed under the current key; 1 when some could not be
opened (their key is missing from the keyring: add it and run again) or the database is
unreachable; 2 for invalid settings (no key, a malformed key). Never prints a key or a secret,
except the new key ``--generate`` was asked for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from core.crypto import generate_key  # noqa: E402
from core.logging import configure_logging  # noqa: E402
from core.redact import redact_urls_in  # noqa: E402
from core.sealing import seal_secrets, secrets_by_key  # noqa: E402
from core.settings import EncryptionSettings, load_settings  # noqa: E402


def _describe(counts: dict[str, int], current: str) -> str:
    if not counts:
        return "no secrets stored"
    parts = [f"{key}{' (current)' if key == current else ''}: {count}"
             for key, count in sorted(counts.items(), key=lambda item: item[0] != current)]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/rotate_key.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only count secrets per key; exit 1 unless all are current")
    parser.add_argument("--generate", action="store_true", help="print a new key and exit")
    args = parser.parse_args(argv)
    if args.generate:
        print(generate_key())
        return 0
    settings = load_settings(EncryptionSettings)
    configure_logging(level=settings.log_level, fmt=settings.log_format, service="rotate_key")
    keyring = settings.keyring()
    if keyring is None:
        print("rotate_key: BLOCKHOOK_ENCRYPTION_KEY (or BLOCKHOOK_ENCRYPTION_KEY_FILE) is not "
              "set: nothing to encrypt with", file=sys.stderr)
        return 2
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
            before = secrets_by_key(conn)
            print(f"before: {_describe(before, keyring.current_id)}")
            if not args.check:
                report = seal_secrets(conn, keyring, rotate=True)
                print(f"re-encrypted {report.sealed} secrets under key {keyring.current_id}"
                      + (f"; {report.unreadable} could not be opened (their key is not in "
                         f"BLOCKHOOK_ENCRYPTION_KEY)" if report.unreadable else ""))
            after = secrets_by_key(conn)
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"rotate_key: {redact_urls_in(first_line)}", file=sys.stderr)
        return 1
    if not args.check:
        print(f"after: {_describe(after, keyring.current_id)}")
    left = sum(count for key, count in after.items() if key != keyring.current_id)
    if left:
        print(f"rotate_key: {left} secrets are not under the current key yet; keep the old "
              f"keys in BLOCKHOOK_ENCRYPTION_KEY", file=sys.stderr)
        return 1
    print("every secret is sealed under the current key: older keys may be removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

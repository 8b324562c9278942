"""``python scripts/roles.py``: set the passwords of blockhook's database roles.

``alembic upgrade head`` creates the roles ``blockhook_ingest``, ``blockhook_processor``,
``blockhook_workers`` and ``blockhook_readonly`` without passwords. This sets the password of
each role whose variable is set — ``BLOCKHOOK_INGEST_PASSWORD``, ``BLOCKHOOK_PROCESSOR_PASSWORD``,
``BLOCKHOOK_WORKERS_PASSWORD``, ``BLOCKHOOK_READONLY_PASSWORD`` — and leaves the others as they
are. Run it with an administrator's ``DATABASE_URL`` (one that may ``ALTER ROLE``); the
password is sent as a SCRAM verifier computed here, never as text. Idempotent: compose's
``migrate`` service runs it after every upgrade.

Exit 0 when done, 1 with one line when the database is unreachable or a role is missing
(``alembic upgrade head`` first). Passwords are never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from core import roles  # noqa: E402
from core.redact import redact_urls_in  # noqa: E402
from core.settings import BaseServiceSettings, load_settings  # noqa: E402


def apply_passwords(database_url: str, passwords: dict[str, str]) -> list[str]:
    """Set each role's password (role → password); return the roles changed. Raises
    ``psycopg.Error`` (a missing role is ``UndefinedObject``)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        for role, password in passwords.items():
            roles.set_password(conn.execute, role, password)
    return list(passwords)


def passwords_from_environment() -> dict[str, str]:
    return {role: os.environ[roles.password_variable(role)] for role in roles.ROLES
            if os.environ.get(roles.password_variable(role))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/roles.py",
                                     description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    settings = load_settings(BaseServiceSettings)
    passwords = passwords_from_environment()
    try:
        changed = apply_passwords(settings.database_url, passwords)
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"roles: {redact_urls_in(first_line)}", file=sys.stderr)
        return 1
    for role in roles.ROLES:
        state = "password set" if role in changed else \
            f"unchanged ({roles.password_variable(role)} not set)"
        print(f"{role}: {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

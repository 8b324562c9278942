"""Least-privilege database roles: one per service, and one for status pages and dashboards.

| role | what it may touch |
|---|---|
| ``blockhook_ingest`` | writes ``events``, ``blocks``, ``checkpoints``, ``reorgs`` (and ``event_batches``, ``factory_children`` through the triggers on ``events``); reads ``factories``; nothing of ``triggers``, ``actions``, ``deliveries`` |
| ``blockhook_processor`` | reads events and the trigger configuration (``actions`` without secret columns); writes ``deliveries``, ``deferred_matches``, ``event_batches``, ``factories`` and the backfill of ``factory_children``, ``triggers.error``, ``reorgs.corrected_at``; runs retention (deletes aged ``events``, ``event_batches``, ``deliveries``, ``reorgs``, ``blocks``; drops and compresses ``events`` chunks through the owner's functions of migration 0005) |
| ``blockhook_workers`` | the only role that reads webhook secrets; writes ``deliveries`` and seals ``actions``' secret columns |
| ``blockhook_readonly`` | reads every table except ``actions.config`` and the secret columns |

:data:`PRIVILEGES` is the one statement of that table, like :mod:`core.schema` is of the
tables: migrations apply it with :func:`grant` and a test compares the database with it.

Roles are cluster-wide while grants live in each database, and every database on a server
migrated by blockhook shares these roles. So :func:`ensure_roles` creates a missing role and
tolerates one created concurrently by a migration of another database; it never alters or
drops an existing role (an operator may have set its password or disabled it), and
``alembic downgrade`` only revokes this database's grants. A role has no password until one is
set: :func:`set_password` (``scripts/roles.py``) or ``ALTER ROLE … PASSWORD``.

A later migration that adds a table adds its entry to :data:`PRIVILEGES` and calls
``grant(op.execute, "new_table")``; one that adds a column to a table with column-level grants
(``actions``) calls ``grant`` for that table again. Table-level grants cover new columns.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

INGEST: Final = "blockhook_ingest"
PROCESSOR: Final = "blockhook_processor"
WORKERS: Final = "blockhook_workers"
READONLY: Final = "blockhook_readonly"

ROLES: Final = {
    INGEST: "blockhook ingest: writes events, blocks, checkpoints and reorgs",
    PROCESSOR: "blockhook processor: evaluates triggers, creates deliveries; no webhook secrets",
    WORKERS: "blockhook workers: delivers webhooks; the only role that reads webhook secrets",
    READONLY: "blockhook read-only: status and dashboards; no config, no secrets",
}

# The columns of ``actions`` holding webhook secrets (plaintext until sealed, then enc:v1).
SECRET_COLUMNS: Final = ("secret", "previous_secret", "previous_secret_expires_at")
_ACTION_COLUMNS: Final = "id, trigger_id, type, enabled, created_at, updated_at"

# table → role → privileges, in GRANT syntax. A role absent from a table's entry has none there.
PRIVILEGES: Final[dict[str, dict[str, str]]] = {
    "events": {INGEST: "SELECT, INSERT, UPDATE (invalidated, invalidated_at)",
               PROCESSOR: "SELECT, DELETE", WORKERS: "SELECT", READONLY: "SELECT"},
    "blocks": {INGEST: "SELECT, INSERT, UPDATE, DELETE", PROCESSOR: "SELECT, DELETE",
               READONLY: "SELECT"},
    "checkpoints": {INGEST: "SELECT, INSERT, UPDATE", PROCESSOR: "SELECT", READONLY: "SELECT"},
    "reorgs": {INGEST: "SELECT, INSERT", PROCESSOR: "SELECT, DELETE, UPDATE (corrected_at)",
               READONLY: "SELECT"},
    # Rows are written by the statement-level trigger on events, as the inserting role.
    "event_batches": {INGEST: "INSERT", PROCESSOR: "SELECT, UPDATE, DELETE", READONLY: "SELECT"},
    "triggers": {PROCESSOR: "SELECT, UPDATE (error)", WORKERS: "SELECT", READONLY: "SELECT"},
    "actions": {PROCESSOR: f"SELECT ({_ACTION_COLUMNS}, config)",
                WORKERS: f"SELECT, UPDATE ({', '.join(SECRET_COLUMNS)})",
                READONLY: f"SELECT ({_ACTION_COLUMNS})"},
    "deliveries": {PROCESSOR: "SELECT, INSERT, UPDATE, DELETE", WORKERS: "SELECT, INSERT, UPDATE",
                   READONLY: "SELECT"},
    "deferred_matches": {PROCESSOR: "SELECT, INSERT, UPDATE, DELETE", READONLY: "SELECT"},
    # Factories are registered by the processor; their children are written by the triggers on
    # events (as the inserting or invalidating role) and by the processor's backfill.
    "factories": {INGEST: "SELECT", PROCESSOR: "SELECT, INSERT", READONLY: "SELECT"},
    "factory_children": {INGEST: "SELECT, INSERT, DELETE", PROCESSOR: "SELECT, INSERT, DELETE",
                         READONLY: "SELECT"},
    # The active indexer's view of its RPC endpoints (redacted URLs), for status pages.
    "rpc_endpoints": {INGEST: "SELECT, INSERT, UPDATE, DELETE", READONLY: "SELECT"},
}

Execute = Callable[[str], Any]  # ``op.execute`` in a migration, ``conn.execute`` elsewhere

_PRIVILEGE = re.compile(r"\s*(?P<name>[A-Z]+)\s*(?:\((?P<columns>[^)]*)\))?\s*(?:,|$)")


def password_variable(role: str) -> str:
    """The environment variable holding ``role``'s password: ``BLOCKHOOK_INGEST_PASSWORD``…"""
    return f"{role.upper()}_PASSWORD"


def parse_privileges(text: str) -> set[tuple[str, str | None]]:
    """``"SELECT, UPDATE (a, b)"`` → ``{("SELECT", None), ("UPDATE", "a"), ("UPDATE", "b")}``."""
    parsed: set[tuple[str, str | None]] = set()
    for match in _PRIVILEGE.finditer(text):
        if not match.group("name"):
            continue
        columns = match.group("columns")
        if columns is None:
            parsed.add((match.group("name"), None))
        else:
            parsed |= {(match.group("name"), c.strip()) for c in columns.split(",")}
    return parsed


def ensure_roles(execute: Execute, roles: Iterable[str] = ROLES) -> None:
    """Create each missing role (LOGIN, no password, no other attribute). Safe to run
    concurrently from migrations of several databases: a role created meanwhile by another
    transaction (``duplicate_object`` or, mid-race, ``unique_violation`` on the catalog) is
    taken as it is. Existing roles are left unchanged."""
    for role in roles:
        comment = ROLES.get(role, "blockhook role").replace("'", "''")
        execute(f"""
            DO $role$
            BEGIN
                IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN
                    BEGIN
                        CREATE ROLE {role} LOGIN;
                        COMMENT ON ROLE {role} IS '{comment}';
                    EXCEPTION WHEN duplicate_object OR unique_violation THEN
                        NULL;  -- created concurrently by a migration of another database
                    END;
                END IF;
            END $role$""")


def grant(execute: Execute, *tables: str) -> None:
    """Make the roles' privileges on ``tables`` exactly what :data:`PRIVILEGES` says (revoke,
    then grant, in the caller's transaction). Raises ``KeyError`` for a table without an entry:
    every table needs a decision, even if it is "nobody"."""
    for table in tables:
        wanted = PRIVILEGES[table]
        execute(f"REVOKE ALL ON TABLE {table} FROM {', '.join(ROLES)}")
        for role, privileges in wanted.items():
            execute(f"GRANT {privileges} ON TABLE {table} TO {role}")


def revoke_all(execute: Execute) -> None:
    """Revoke every privilege the roles hold on this database's tables (``downgrade``). The
    roles themselves stay: other databases on the server may use them."""
    for role in ROLES:  # an operator may have dropped a role by hand
        execute(f"""
            DO $role$
            BEGIN
                IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN
                    REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};
                END IF;
            END $role$""")


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for ``password``, computed here so that the
    password itself never travels in a statement (server logs, ``pg_stat_statements``)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def set_password(execute: Execute, role: str, password: str) -> None:
    """``ALTER ROLE … PASSWORD`` with a client-side SCRAM verifier."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    execute(f"ALTER ROLE {role} PASSWORD '{scram_verifier(password)}'")


def role_url(database_url: str, role: str, password: str | None = None) -> str:
    """``database_url`` with its user (and password) replaced by ``role``'s."""
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = role if not password else f"{role}:{quote(password, safe='')}"
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query,
                       parts.fragment))

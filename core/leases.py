"""Delivery leases (workers.store): when a lease no longer keeps a row from other workers.

A worker leases a delivery for one attempt (``deliveries.leased_by`` = ``<worker id>/<claim>``,
``deliveries.lease_expires_at``). Every worker process holds, for its whole life, a session-level
advisory lock keyed by its worker id (:func:`holder_lock_key_sql`) on a connection of its own.
A lease is free once it has expired, *or* once that lock is gone: a worker killed mid-attempt
loses its session at once, so its deliveries are taken over within seconds, not after the
expiry (which remains the fallback for a host that vanished without closing its connections).

Shared by the workers (claims) and the processor (the lost-job sweep leaves live leases alone).
"""

from __future__ import annotations


def holder_lock_key_sql(worker_id_sql: str) -> str:
    """SQL for the advisory-lock key of a worker id (an SQL expression of type text)."""
    return f"hashtextextended({worker_id_sql}, 0)"


def lease_free_sql(alias: str) -> str:
    """An SQL condition: the row ``alias`` of ``deliveries`` is under no live lease."""
    holder = holder_lock_key_sql(f"split_part({alias}.leased_by, '/', 1)")
    return f"""({alias}.lease_expires_at IS NULL
     OR {alias}.lease_expires_at <= clock_timestamp()
     OR NOT EXISTS (
         SELECT 1 FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((l.classid::int8 << 32) | l.objid::int8) = {holder}))"""

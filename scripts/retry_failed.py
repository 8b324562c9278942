"""Retry failed webhook deliveries: ``python scripts/retry_failed.py [--id N ...]
[--trigger NAME] [--since ISO-TIME] [--dry-run]``.

Selected ``failed`` deliveries go back to ``queued`` with ``attempts = 0`` (a full retry
schedule), ``next_attempt_at = now()``, and are enqueued at once; ``last_error`` and
``last_status_code`` stay until the next attempt replaces them. Without filters every failed
delivery is retried. Prints how many were requeued. Exit 1 with one line when the database or
Redis is unreachable.

The same in SQL (the processor's sweep then enqueues the rows within about a minute)::

    UPDATE deliveries SET status = 'queued', attempts = 0, next_attempt_at = now()
    WHERE status = 'failed' AND id IN (...);
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from core import db  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.queue import enqueue_deliveries  # noqa: E402
from core.redact import redact_urls_in  # noqa: E402
from core.settings import WorkerSettings, load_settings  # noqa: E402

_SELECT = """
SELECT d.id FROM deliveries d JOIN triggers t ON t.id = d.trigger_id
WHERE d.status = 'failed'
  AND ($1::bigint[] IS NULL OR d.id = ANY($1::bigint[]))
  AND ($2::text IS NULL OR t.name = $2)
  AND ($3::timestamptz IS NULL OR d.updated_at >= $3)
ORDER BY d.id
FOR UPDATE OF d
"""

_REQUEUE = """
UPDATE deliveries SET status = 'queued', attempts = 0, next_attempt_at = now(), queued_at = now()
WHERE id = ANY($1::bigint[]) AND status = 'failed'
"""


async def requeue(database_url: str, *, ids: list[int] | None, trigger: str | None,
                  since: datetime | None, dry_run: bool) -> list[int]:
    """Move the selected failed deliveries back to ``queued``; return their ids."""
    conn = await db.connect(database_url)
    try:
        async with conn.transaction():
            selected = [row["id"] for row in await conn.fetch(_SELECT, ids, trigger, since)]
            if selected and not dry_run:
                await conn.execute(_REQUEUE, selected)
        return selected
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", type=int, action="append", dest="ids", help="a delivery id")
    parser.add_argument("--trigger", help="only deliveries of this trigger (name)")
    parser.add_argument("--since", type=datetime.fromisoformat,
                        help="only deliveries that failed at or after this time")
    parser.add_argument("--dry-run", action="store_true", help="show what would be retried")
    args = parser.parse_args()
    settings = load_settings(WorkerSettings)
    try:
        selected = asyncio.run(requeue(settings.database_url, ids=args.ids, trigger=args.trigger,
                                       since=args.since, dry_run=args.dry_run))
    except ConfigError as error:
        print(f"retry_failed: {redact_urls_in(str(error))}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"would retry {len(selected)} failed deliveries: {selected[:20]}"
              + (" …" if len(selected) > 20 else ""))
        return 0
    client = redis.Redis.from_url(settings.redis_url)
    try:
        enqueue_deliveries(client, selected)
    except redis.RedisError as error:
        # The rows are queued in Postgres: the processor's sweep enqueues them later.
        print(f"retry_failed: requeued {len(selected)} in the database, but Redis is "
              f"unreachable ({redact_urls_in(str(error))}); the processor's sweep will enqueue "
              f"them", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"retried {len(selected)} failed deliveries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

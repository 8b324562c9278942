"""``scripts/replay.py --refire``: evaluate stored events of a block range again and fire only the
(action, event) pairs that never had a ``matched`` delivery — a new trigger's history.

Deliveries created here carry ``replay = true`` (the payload says ``"replay": true``). The
trigger's confirmations are respected: matches deep enough below the checkpoint fire now, the
others are parked in ``deferred_matches`` like live ones. Running it twice creates nothing the
second time (the unique key and the existence checks see the first run's rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import redis

from core.factories import register_factories
from core.queue import REPLAY_QUEUE_NAME
from processor.children import children_of
from processor.evaluate import Evaluation, evaluate_events
from processor.outbox import (
    enqueue_created,
    insert_deferred,
    insert_deliveries,
    use_generic_plans,
)
from processor.registry import TriggerRegistry, load_registry

BLOCK_PAGE = 2000

# Valid events of the range by (chain_id, block_number) index; ordered for stable paging.
_RANGE_EVENTS = """
SELECT id, block_number, block_time, tx_hash, log_index, address, topic0, topic1, topic2, topic3,
       data
FROM events
WHERE chain_id = $1 AND block_number BETWEEN $2 AND $3 AND NOT invalidated
ORDER BY block_number, log_index
"""

# Dry run: which proposed pairs have neither a matched delivery nor a deferred match yet.
_NEW_PAIRS = """
SELECT u.trigger_id, count(*) AS n
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(action_id, trigger_id, event_id)
WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.action_id = u.action_id
                  AND d.event_id = u.event_id AND d.kind = 'matched')
  AND NOT EXISTS (SELECT 1 FROM deferred_matches m WHERE m.action_id = u.action_id
                  AND m.event_id = u.event_id)
GROUP BY u.trigger_id
"""


@dataclass
class TriggerRefire:
    trigger_id: int
    name: str
    deliveries: int = 0  # created (or, in a dry run, that would be created) now or deferred


@dataclass
class RefireReport:
    chain_id: int
    from_block: int
    to_block: int
    dry_run: bool
    events: int = 0
    deliveries: int = 0
    per_trigger: dict[int, TriggerRefire] = field(default_factory=dict)
    delivery_ids: list[int] = field(default_factory=list)


async def refire(conn: asyncpg.Connection, *, chain_id: int, from_block: int, to_block: int,
                 dry_run: bool, redis_client: redis.Redis | None = None,
                 pool: asyncpg.Pool | None = None,
                 registry: TriggerRegistry | None = None) -> RefireReport:
    """Evaluate valid events of blocks ``from_block..to_block`` against the enabled triggers.

    Without ``dry_run`` the new deliveries are committed (one transaction per page of blocks)
    and, when ``redis_client`` and ``pool`` are given, enqueued; otherwise a running processor's
    sweep enqueues them within seconds. ``per_trigger`` counts the deliveries and deferred
    matches created (or, with ``dry_run``, that would be created; nothing is written)."""
    registry = registry or await load_registry(conn)
    if not dry_run:
        # A factory no processor has registered yet (none running) has no children to match:
        # register it (and derive its children from the stored creation logs) first.
        await register_factories(conn, registry.factories)
    report = RefireReport(chain_id=chain_id, from_block=from_block, to_block=to_block,
                          dry_run=dry_run)
    checkpoint = await conn.fetchval(
        "SELECT block_number FROM checkpoints WHERE chain_id = $1", chain_id)
    for low in range(from_block, to_block + 1, BLOCK_PAGE):
        high = min(low + BLOCK_PAGE - 1, to_block)
        async with conn.transaction():
            events = await conn.fetch(_RANGE_EVENTS, chain_id, low, high)
            children = await children_of(conn, registry, chain_id=chain_id, events=events)
            evaluation = evaluate_events(events, registry, chain_id=chain_id,
                                         checkpoint=checkpoint, children=children)
            report.events += evaluation.events
            counts = await _new_pairs(conn, evaluation)
            if not dry_run and evaluation.has_rows:
                await use_generic_plans(conn)  # the page's events are loaded
                report.delivery_ids += await insert_deliveries(
                    conn, action_ids=evaluation.action_ids, trigger_ids=evaluation.trigger_ids,
                    event_ids=evaluation.event_ids, replay=True)
                await insert_deferred(
                    conn, chain_id=chain_id, action_ids=evaluation.deferred_action_ids,
                    trigger_ids=evaluation.deferred_trigger_ids,
                    event_ids=evaluation.deferred_event_ids,
                    block_numbers=evaluation.deferred_block_numbers,
                    block_times=evaluation.deferred_block_times,
                    ready_at=evaluation.deferred_ready_at, replay=True)
        for trigger_id, count in counts.items():
            entry = report.per_trigger.setdefault(
                trigger_id, TriggerRefire(trigger_id, registry.by_id[trigger_id].name))
            entry.deliveries += count
            report.deliveries += count
    if report.delivery_ids and redis_client is not None and pool is not None:
        # On the replay queue: workers take it only when no live delivery waits.
        await enqueue_created(pool, redis_client, report.delivery_ids,
                              queue_name=REPLAY_QUEUE_NAME)
    return report


async def _new_pairs(conn: asyncpg.Connection, evaluation: Evaluation) -> dict[int, int]:
    action_ids = evaluation.action_ids + evaluation.deferred_action_ids
    if not action_ids:
        return {}
    rows = await conn.fetch(_NEW_PAIRS, action_ids,
                            evaluation.trigger_ids + evaluation.deferred_trigger_ids,
                            evaluation.event_ids + evaluation.deferred_event_ids)
    return {row["trigger_id"]: row["n"] for row in rows}

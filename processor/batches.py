"""Claim committed event batches and turn them into deliveries, exactly once.

``event_batches`` is the record of what to process (one row per insert statement into
``events``, written by a trigger in the inserting transaction, so a batch is visible exactly when
its events are, whatever order writers commit in). One claim is one transaction:

1. lock unprocessed batches ``FOR UPDATE SKIP LOCKED`` (other processors take other batches);
2. load each batch's events by ``chain_id``, its id range *and* its exact ``block_time`` range
   (TimescaleDB excludes every chunk the batch did not touch; the bounds were taken from the very
   rows inserted, so they cannot hide one);
3. evaluate, insert deliveries / deferred matches, set ``processed_at``;

then, after commit, enqueue the new deliveries. Overlapping id ranges of concurrent batches can
only propose the same (action, event) pairs, which the unique key absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from processor import metrics
from processor.children import children_of
from processor.evaluate import Evaluation, evaluate_events
from processor.outbox import insert_deferred, insert_deliveries, use_generic_plans
from processor.registry import TriggerRegistry

CLAIM_LIMIT = 500
PAGE_SIZE = 5000

_CLAIM = """
SELECT id, chain_id, first_id, last_id, min_block_time, max_block_time, row_count, created_at
FROM event_batches
WHERE processed_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

# The block_time bound is exact for the batch: it lets TimescaleDB touch only its chunks.
LOAD_EVENTS = """
SELECT id, block_number, block_time, tx_hash, log_index, address, topic0, topic1, topic2, topic3,
       data
FROM events
WHERE chain_id = $1 AND id BETWEEN $2 AND $3 AND block_time BETWEEN $4 AND $5
  AND NOT invalidated
"""

_CHECKPOINTS = "SELECT chain_id, block_number FROM checkpoints WHERE chain_id = ANY($1::bigint[])"

_MARK_PROCESSED = "UPDATE event_batches SET processed_at = now() WHERE id = ANY($1::bigint[])"


@dataclass
class ClaimResult:
    """What one claim did; ``delivery_ids``/``committed_at`` are for the after-commit enqueue."""

    batches: int = 0
    events: int = 0
    # More batches may be waiting right now (the claim was cut short or hit its limit). When
    # False, anything committed since has sent a NOTIFY, so the caller need not claim again.
    more: bool = False
    delivery_ids: list[int] = field(default_factory=list)
    committed_at: list[datetime] = field(default_factory=list)


async def process_batches(conn: asyncpg.Connection, registry: TriggerRegistry, *,
                          max_events: int, claim_limit: int = CLAIM_LIMIT,
                          page_size: int = PAGE_SIZE) -> ClaimResult:
    """Claim and process batches worth about ``max_events`` events (at least one batch) in one
    transaction on ``conn``. Returns an empty result when nothing is left to claim."""
    result = ClaimResult()
    async with conn.transaction():
        claimed = await conn.fetch(_CLAIM, claim_limit)
        if not claimed:
            return result
        selected: list[asyncpg.Record] = []
        total = 0
        for batch in claimed:
            if selected and total + batch["row_count"] > max_events:
                break  # the rest stay unprocessed and are unlocked at commit
            selected.append(batch)
            total += batch["row_count"]
        checkpoints: dict[int, int] = {}
        if registry.needs_checkpoints:
            chains = sorted({batch["chain_id"] for batch in selected})
            checkpoints = {row["chain_id"]: row["block_number"]
                           for row in await conn.fetch(_CHECKPOINTS, chains)}
        # Pages with rows to insert, stored once every page is loaded: see _store_all.
        stores: list[tuple[Evaluation, int, datetime]] = []
        for batch in selected:
            chain_id = batch["chain_id"]
            evaluation = Evaluation()
            # Pages by id keep memory flat for a huge statement (a replay of a long range).
            for low in range(batch["first_id"], batch["last_id"] + 1, page_size):
                high = min(low + page_size - 1, batch["last_id"])
                events = await conn.fetch(LOAD_EVENTS, chain_id, low, high,
                                          batch["min_block_time"], batch["max_block_time"])
                children = await children_of(conn, registry, chain_id=chain_id, events=events)
                evaluate_events(events, registry, chain_id=chain_id,
                                checkpoint=checkpoints.get(chain_id), result=evaluation,
                                children=children)
                if evaluation.has_rows:
                    stores.append((evaluation, chain_id, batch["created_at"]))
                metrics.EVENTS.inc(evaluation.events)
                metrics.MATCHES.inc(evaluation.matches)
                metrics.DECODE_FAILURES.inc(evaluation.decode_failures)
                result.events += evaluation.events
                evaluation = Evaluation()
        await _store_all(conn, stores, result=result)
        await conn.execute(_MARK_PROCESSED, [batch["id"] for batch in selected])
        result.batches = len(selected)
        result.more = len(claimed) == claim_limit or len(selected) < len(claimed)
    return result


async def _store_all(conn: asyncpg.Connection, stores: list[tuple[Evaluation, int, datetime]],
                     *, result: ClaimResult) -> None:
    """Insert the deliveries and deferred matches of every page that has any, after the last
    page's events were loaded: the loads keep their custom plans, the inserts' foreign-key checks
    get generic ones (:func:`processor.outbox.use_generic_plans`)."""
    if stores:
        await use_generic_plans(conn)
    for evaluation, chain_id, committed_at in stores:
        await _store(conn, evaluation, chain_id=chain_id, committed_at=committed_at,
                     result=result)


async def _store(conn: asyncpg.Connection, evaluation: Evaluation, *, chain_id: int,
                 committed_at: datetime, result: ClaimResult) -> None:
    created = await insert_deliveries(conn, action_ids=evaluation.action_ids,
                                      trigger_ids=evaluation.trigger_ids,
                                      event_ids=evaluation.event_ids, committed_at=committed_at)
    result.delivery_ids.extend(created)
    result.committed_at.extend([committed_at] * len(created))
    await insert_deferred(conn, chain_id=chain_id, action_ids=evaluation.deferred_action_ids,
                          trigger_ids=evaluation.deferred_trigger_ids,
                          event_ids=evaluation.deferred_event_ids,
                          block_numbers=evaluation.deferred_block_numbers,
                          block_times=evaluation.deferred_block_times,
                          ready_at=evaluation.deferred_ready_at)


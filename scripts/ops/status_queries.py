"""The read-only queries behind ``scripts/status.py``; each returns a pydantic model or plain
values so the report serialises to JSON unchanged."""

from __future__ import annotations

import json
import time

import asyncpg
from pydantic import BaseModel
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from core.queue import (
    ENDPOINT_STATE_KEY,
    ENDPOINT_STATE_TTL_SECONDS,
    QUEUE_NAME,
    REPLAY_QUEUE_NAME,
)
from core.redact import redact_urls_in
from core.schema import DELIVERY_STATUSES


class ReorgSummary(BaseModel):
    detected_at: str
    age_seconds: float
    depth: int
    common_ancestor: int
    events_invalidated: int


class ChainStatus(BaseModel):
    chain_id: int
    node_head: int | None
    checkpoint: int | None
    checkpoint_updated_at: str | None
    lag_blocks: int | None  # node head - checkpoint, when both are known
    events_valid: int
    events_invalidated: int
    last_reorg: ReorgSummary | None
    unprocessed_batches: int  # processor lag: event_batches not yet processed …
    unprocessed_events: int  # … the events they hold …
    oldest_unprocessed_age_seconds: float | None  # … and how long the oldest has waited
    deferred_matches: int  # matches waiting for their trigger's confirmations
    triggers_enabled: int


class QueueStatus(BaseModel):
    name: str
    depth: int = 0
    started: int = 0
    scheduled: int = 0
    failed: int = 0
    workers: int = 0
    # Jobs of a refire's history (core.queue.REPLAY_QUEUE_NAME), taken only when the live
    # queue is empty.
    history_depth: int = 0
    error: str | None = None


class CircuitRow(BaseModel):
    """A webhook endpoint whose circuit breaker holds its deliveries back, as the worker process
    that saw it last reported (Redis ``ENDPOINT_STATE_KEY``)."""

    endpoint: str
    circuit: str  # open, or probing (one probe in flight)
    failures: int
    waiting: int
    in_flight: int
    open_for_seconds: float
    probe_interval: float
    last_error: str | None
    worker: str
    age_seconds: float


class EndpointRow(BaseModel):
    """One RPC endpoint as the chain's active indexer last saw it (table ``rpc_endpoints``)."""

    chain_id: int
    position: int
    endpoint: str  # redacted URL
    state: str
    head: int | None
    lag_blocks: int | None
    health_score: float
    latency_ms: float | None
    requests: int
    errors: int
    last_error: str | None
    age_seconds: float  # since the indexer last wrote the row


class InvalidTriggerRow(BaseModel):
    id: int
    name: str
    chain_id: int
    enabled: bool
    error: str


# One round trip per concern. The chains shown are every chain with a checkpoint, a trigger,
# unprocessed batches or events (the last from the counts query, which scans events anyway).
_CHAINS = """
SELECT chain_id FROM checkpoints
UNION SELECT chain_id FROM triggers
UNION SELECT chain_id FROM event_batches WHERE processed_at IS NULL
"""
_CHECKPOINTS = "SELECT chain_id, block_number, updated_at FROM checkpoints"
# A full count: exact numbers are what an operator checks a replay against. On very large
# tables this is the slow part of status (seconds per hundred million rows).
_EVENT_COUNTS = """
SELECT chain_id, count(*) FILTER (WHERE NOT invalidated) AS valid,
       count(*) FILTER (WHERE invalidated) AS invalidated
FROM events GROUP BY chain_id
"""
_LAST_REORGS = """
SELECT DISTINCT ON (chain_id) chain_id, detected_at, depth, common_ancestor, events_invalidated,
       extract(epoch FROM now() - detected_at)::float8 AS age
FROM reorgs ORDER BY chain_id, detected_at DESC, id DESC
"""
_BACKLOG = """
SELECT chain_id, count(*) AS batches, coalesce(sum(row_count), 0)::bigint AS events,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest
FROM event_batches WHERE processed_at IS NULL GROUP BY chain_id
"""
_DEFERRED = "SELECT chain_id, count(*) AS n FROM deferred_matches GROUP BY chain_id"
_TRIGGERS = "SELECT chain_id, count(*) AS n FROM triggers WHERE enabled GROUP BY chain_id"


async def chain_statuses(conn: asyncpg.Connection, heads: dict[int, int]) -> list[ChainStatus]:
    """One row per chain known to the database or to a node we asked (``heads``)."""
    checkpoints = {r["chain_id"]: r for r in await conn.fetch(_CHECKPOINTS)}
    counts = {r["chain_id"]: r for r in await conn.fetch(_EVENT_COUNTS)}
    chain_ids = {r["chain_id"] for r in await conn.fetch(_CHAINS)} | set(heads) | set(counts)
    reorgs = {r["chain_id"]: r for r in await conn.fetch(_LAST_REORGS)}
    backlog = {r["chain_id"]: r for r in await conn.fetch(_BACKLOG)}
    deferred = {r["chain_id"]: r["n"] for r in await conn.fetch(_DEFERRED)}
    triggers = {r["chain_id"]: r["n"] for r in await conn.fetch(_TRIGGERS)}
    statuses = []
    for chain_id in sorted(chain_ids):
        checkpoint = checkpoints.get(chain_id)
        head = heads.get(chain_id)
        checkpoint_block = checkpoint["block_number"] if checkpoint else None
        reorg = reorgs.get(chain_id)
        pending = backlog.get(chain_id)
        statuses.append(ChainStatus(
            chain_id=chain_id,
            node_head=head,
            checkpoint=checkpoint_block,
            checkpoint_updated_at=checkpoint["updated_at"].isoformat() if checkpoint else None,
            # A checkpoint above the head (a node behind its peers) shows as 0, not negative.
            lag_blocks=(max(0, head - checkpoint_block)
                        if head is not None and checkpoint_block is not None else None),
            events_valid=counts[chain_id]["valid"] if chain_id in counts else 0,
            events_invalidated=counts[chain_id]["invalidated"] if chain_id in counts else 0,
            last_reorg=ReorgSummary(
                detected_at=reorg["detected_at"].isoformat(), age_seconds=reorg["age"],
                depth=reorg["depth"], common_ancestor=reorg["common_ancestor"],
                events_invalidated=reorg["events_invalidated"]) if reorg else None,
            unprocessed_batches=pending["batches"] if pending else 0,
            unprocessed_events=pending["events"] if pending else 0,
            oldest_unprocessed_age_seconds=pending["oldest"] if pending else None,
            deferred_matches=deferred.get(chain_id, 0),
            triggers_enabled=triggers.get(chain_id, 0),
        ))
    return statuses


async def deliveries_last_hour(conn: asyncpg.Connection) -> dict[str, int]:
    """Deliveries created in the last hour, by status; every status present (zeros included)."""
    rows = await conn.fetch("""SELECT status, count(*) AS n FROM deliveries
                               WHERE created_at > now() - interval '1 hour' GROUP BY status""")
    found = {r["status"]: r["n"] for r in rows}
    return {status: found.get(status, 0) for status in DELIVERY_STATUSES}


async def open_deliveries(conn: asyncpg.Connection) -> int:
    """Deliveries still to be sent, whatever their age (the partial index makes this cheap)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'queued')")
    return count


async def in_flight_deliveries(conn: asyncpg.Connection) -> int:
    """Open deliveries under a worker's live lease: an attempt in flight right now."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM deliveries WHERE status IN ('pending', 'queued')
           AND lease_expires_at > now()""")
    return count


def circuit_rows(redis_url: str) -> list[CircuitRow]:
    """Webhook endpoints with an open circuit, fresh entries only; ``[]`` when Redis is
    unreachable (the queue line says so)."""
    redis = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        entries = redis.hgetall(ENDPOINT_STATE_KEY)
    except RedisError:
        return []
    finally:
        redis.close()
    now = time.time()
    circuits = []
    for endpoint, raw in sorted(entries.items()):
        try:
            state = json.loads(raw)
            age = now - float(state["updated"])
            if age > ENDPOINT_STATE_TTL_SECONDS:
                continue
            circuits.append(CircuitRow(endpoint=endpoint.decode(), age_seconds=round(age, 1),
                                       **{k: v for k, v in state.items() if k != "updated"}))
        except (ValueError, KeyError, TypeError):
            continue  # a malformed entry is not worth failing the status page for
    return circuits


async def endpoint_rows(conn: asyncpg.Connection) -> list[EndpointRow]:
    rows = await conn.fetch(
        """SELECT chain_id, position, endpoint, state, head, lag_blocks, health_score, latency_ms,
                  requests, errors, last_error,
                  extract(epoch FROM now() - updated_at)::float8 AS age_seconds
           FROM rpc_endpoints ORDER BY chain_id, position""")
    return [EndpointRow(**dict(r)) for r in rows]


async def invalid_triggers(conn: asyncpg.Connection) -> list[InvalidTriggerRow]:
    rows = await conn.fetch("""SELECT id, name, chain_id, enabled, error FROM triggers
                               WHERE error IS NOT NULL ORDER BY id""")
    return [InvalidTriggerRow(**dict(r)) for r in rows]


def queue_status(redis_url: str) -> QueueStatus:
    """Depth and registries of the delivery queue; ``error`` instead when Redis is unreachable."""
    redis = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        queue = Queue(QUEUE_NAME, connection=redis)
        return QueueStatus(
            name=QUEUE_NAME,
            depth=queue.count,
            started=StartedJobRegistry(queue=queue).count,
            scheduled=ScheduledJobRegistry(queue=queue).count,
            failed=FailedJobRegistry(queue=queue).count,
            workers=Worker.count(queue=queue),
            history_depth=Queue(REPLAY_QUEUE_NAME, connection=redis).count,
        )
    except RedisError as error:
        return QueueStatus(name=QUEUE_NAME, error=redact_urls_in(str(error)))
    finally:
        redis.close()

"""``scripts/replay.py --dry-run``: which deliveries the logs a replay would add would create.

:class:`RecordingSource` wraps the chain source used by the (read-only) dry-run replay and keeps
the logs that could match an enabled trigger (by the registry's candidate index: chain, address,
topic0); :func:`new_log_deliveries` then drops those already stored and evaluates the rest with
the processor's own :func:`processor.evaluate.evaluate_events`. New events have no deliveries yet,
so every match counts (deferred ones included: they fire once deep enough).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ingest.rpc import ChainSource, Header, Log
from processor.evaluate import evaluate_events
from processor.registry import TriggerRegistry


class RecordingSource:
    """A ``ChainSource`` that records candidate logs and the headers it served."""

    def __init__(self, source: ChainSource, registry: TriggerRegistry, chain_id: int) -> None:
        self.source = source
        self.registry = registry
        self.chain = chain_id  # not ``chain_id``: that is the protocol's method
        self.headers_by_number: dict[int, Header] = {}
        self.candidates: dict[tuple[str, int], Log] = {}

    async def chain_id(self) -> int:
        return await self.source.chain_id()

    async def head(self) -> int:
        return await self.source.head()

    async def tagged_header(self, tag: str) -> Header | None:
        return await self.source.tagged_header(tag)

    async def headers(self, numbers: Sequence[int]) -> list[Header | None]:
        headers = await self.source.headers(numbers)
        for header in headers:
            if header is not None:
                self.headers_by_number[header.number] = header
        return headers

    async def logs(self, first: int, last: int, addresses: Sequence[str] = (), *,
                   topic0: str | None = None) -> list[Log]:
        return self._record(await self.source.logs(first, last, addresses, topic0=topic0))

    async def logs_by_hash(self, block_hash: str, addresses: Sequence[str] = (), *,
                           topic0: str | None = None) -> list[Log]:
        return self._record(await self.source.logs_by_hash(block_hash, addresses, topic0=topic0))

    async def logs_by_hashes(self, block_hashes: Sequence[str], addresses: Sequence[str] = (), *,
                             topic0: str | None = None) -> list[list[Log] | Exception]:
        answers = await self.source.logs_by_hashes(block_hashes, addresses, topic0=topic0)
        for answer in answers:
            if isinstance(answer, list):
                self._record(answer)
        return answers

    def _record(self, logs: list[Log]) -> list[Log]:
        for entry in logs:
            if self.registry.candidates(self.chain, entry.address, entry.topic0):
                self.candidates[(entry.block_hash, entry.log_index)] = entry
        return logs

    def canonical_candidates(self) -> list[tuple[Log, datetime]]:
        """Recorded candidates whose block is the last one served at its height (a range
        fetched again after the node moved replaces the abandoned branch)."""
        kept = []
        for entry in self.candidates.values():
            header = self.headers_by_number.get(entry.block_number)
            if header is not None and header.hash == entry.block_hash:
                kept.append((entry, datetime.fromtimestamp(header.timestamp, UTC)))
        return kept


async def new_log_deliveries(conn: asyncpg.Connection, recording: RecordingSource,
                             registry: TriggerRegistry) -> dict[int, int]:
    """Trigger id → deliveries the candidate logs not stored as valid events would create (an
    invalidated twin does not count: the returning log is stored again as a new event)."""
    candidates = recording.canonical_candidates()
    if not candidates:
        return {}
    stored = await conn.fetch(
        """SELECT e.block_hash, e.log_index FROM events e
           JOIN unnest($2::text[], $3::int[], $4::timestamptz[]) AS c(block_hash, log_index, t)
             ON e.block_hash = c.block_hash AND e.log_index = c.log_index AND e.block_time = c.t
           WHERE e.chain_id = $1 AND NOT e.invalidated""",
        recording.chain, [log.block_hash for log, _ in candidates],
        [log.log_index for log, _ in candidates], [time for _, time in candidates])
    have = {(row["block_hash"], row["log_index"]) for row in stored}
    events: list[dict[str, Any]] = [
        {"id": n, "block_number": log.block_number, "block_time": time, "tx_hash": log.tx_hash,
         "log_index": log.log_index, "address": log.address, "topic0": log.topic0,
         "topic1": log.topic1, "topic2": log.topic2, "topic3": log.topic3, "data": log.data}
        for n, (log, time) in enumerate(candidates) if (log.block_hash, log.log_index) not in have
    ]
    checkpoint = await conn.fetchval("SELECT block_number FROM checkpoints WHERE chain_id = $1",
                                     recording.chain)
    evaluation = evaluate_events(events, registry, chain_id=recording.chain,
                                 checkpoint=checkpoint)
    return dict(evaluation.per_trigger)

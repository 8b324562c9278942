"""Evaluate stored events against the registry: pure, no I/O.

Each event finds its candidates' match indexes in O(1) (``TriggerRegistry.matches``): the
triggers their keys admit are checked further, the log decoded at most once per signature and
only when some trigger needs it (a log that does not decode is a non-match, counted). A match
becomes a delivery now, or a deferred match when the trigger wants more confirmations than the
chain's checkpoint gives yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from processor.registry import NO_CHILDREN, ChildLookup, TriggerRegistry


@dataclass
class Evaluation:
    """Matches of one group of events, as column lists ready for ``unnest`` inserts."""

    action_ids: list[int] = field(default_factory=list)
    trigger_ids: list[int] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)
    # Deferred matches (confirmations not reached yet).
    deferred_action_ids: list[int] = field(default_factory=list)
    deferred_trigger_ids: list[int] = field(default_factory=list)
    deferred_event_ids: list[int] = field(default_factory=list)
    deferred_block_numbers: list[int] = field(default_factory=list)
    deferred_block_times: list[datetime] = field(default_factory=list)
    deferred_ready_at: list[int] = field(default_factory=list)
    events: int = 0
    matches: int = 0
    decode_failures: int = 0
    # trigger id → deliveries (or deferred matches) this evaluation asks for.
    per_trigger: dict[int, int] = field(default_factory=dict)

    @property
    def deferred_count(self) -> int:
        return len(self.deferred_event_ids)

    @property
    def has_rows(self) -> bool:
        """Whether storing it inserts anything (deliveries or deferred matches)."""
        return bool(self.event_ids or self.deferred_event_ids)


def evaluate_events(events: Sequence[Mapping[str, Any]], registry: TriggerRegistry, *,
                    chain_id: int, checkpoint: int | None,
                    result: Evaluation | None = None, reference: bool = False,
                    children: ChildLookup = NO_CHILDREN) -> Evaluation:
    """Evaluate ``events`` (rows with id, block_number, block_time, address, topic0..3, data,
    tx_hash, log_index) of ``chain_id``. ``checkpoint`` is the chain's last ingested block
    (``None`` when unknown: every ``confirmations > 0`` match is deferred). ``reference``
    evaluates every candidate's whole predicate instead of the index (same result, slower:
    for tests and benchmarks). ``children``: the factory children among the events' emitters
    (``processor.children.children_of``); without them factory triggers match nothing."""
    result = result or Evaluation()
    matches_of = registry.reference_matches if reference else registry.matches
    per_trigger = result.per_trigger
    for event in events:
        result.events += 1
        matched, failures = matches_of(chain_id, event, children)
        if failures:
            result.decode_failures += failures
        if not matched:
            continue
        block_number = event["block_number"]
        for trigger in matched:
            result.matches += 1
            ready_at = block_number + trigger.confirmations
            deferred = trigger.confirmations > 0 and (checkpoint is None or checkpoint < ready_at)
            for action_id in trigger.action_ids:
                per_trigger[trigger.id] = per_trigger.get(trigger.id, 0) + 1
                if deferred:
                    result.deferred_action_ids.append(action_id)
                    result.deferred_trigger_ids.append(trigger.id)
                    result.deferred_event_ids.append(event["id"])
                    result.deferred_block_numbers.append(block_number)
                    result.deferred_block_times.append(event["block_time"])
                    result.deferred_ready_at.append(ready_at)
                else:
                    result.action_ids.append(action_id)
                    result.trigger_ids.append(trigger.id)
                    result.event_ids.append(event["id"])
    return result

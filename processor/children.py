"""The factory children among a page of events' emitters, read from ``factory_children``.

One query per page of events, and only for events whose ``topic0`` some factory trigger of the
chain watches; the registry then looks each emitter up in the returned dict. Reading the table
at claim time is what makes the child set right: ``factory_children`` is written in the
transaction that stores the creation log (and loses the row in the one that invalidates it), and
the indexer commits ranges in chain order, so every child created at or before a claimed event's
block is visible to the claim — whichever processor creates the deliveries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from core.factories import Factory
from processor.registry import NO_CHILDREN, ChildLookup, TriggerRegistry

# The first creation of a child per factory (a factory could announce the same child twice).
_CHILDREN_OF = """
SELECT c.child_address, f.chain_id, f.address, f.topic0, f.child_topic, f.child_offset,
       min(c.block_number) AS created
FROM factory_children c JOIN factories f ON f.id = c.factory_id
WHERE c.chain_id = $1 AND c.child_address = ANY($2::text[])
GROUP BY c.child_address, f.id"""


async def children_of(conn: asyncpg.Connection, registry: TriggerRegistry, *, chain_id: int,
                      events: Sequence[Mapping[str, Any]]) -> ChildLookup:
    """The children (with their factories and creation blocks) among the emitters of the
    ``events`` a factory trigger of ``registry`` could match."""
    topics = registry.factory_topics.get(chain_id)
    if not topics:
        return NO_CHILDREN
    addresses = list({event["address"] for event in events if event["topic0"] in topics})
    if not addresses:
        return NO_CHILDREN
    found: dict[str, list[tuple[Factory, int]]] = {}
    for row in await conn.fetch(_CHILDREN_OF, chain_id, addresses):
        factory = Factory(row["chain_id"], row["address"], row["topic0"], row["child_topic"],
                          row["child_offset"])
        found.setdefault(row["child_address"], []).append((factory, row["created"]))
    return {address: tuple(created_by) for address, created_by in found.items()}

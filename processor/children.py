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
from processor.registry import NO_CHILDREN, ChildLookup, FactoryGroup, TriggerRegistry

# The first creation of a child per factory (a factory could announce the same child twice).
_CHILDREN_OF = """
SELECT child_address, factory_id, min(block_number) AS created
FROM factory_children
WHERE chain_id = $1 AND child_address = ANY($2::text[])
GROUP BY child_address, factory_id"""

_FACTORIES = """
SELECT id, chain_id, address, topic0, child_topic, child_offset FROM factories
WHERE id = ANY($1::bigint[])"""


async def children_of(conn: asyncpg.Connection, registry: TriggerRegistry, *, chain_id: int,
                      events: Sequence[Mapping[str, Any]]) -> ChildLookup:
    """The children (with their factories' trigger groups and creation blocks) among the
    emitters of the ``events`` a factory trigger of ``registry`` could match."""
    topics = registry.factory_topics.get(chain_id)
    if not topics:
        return NO_CHILDREN
    addresses = list({event["address"] for event in events if event["topic0"] in topics})
    if not addresses:
        return NO_CHILDREN
    rows = await conn.fetch(_CHILDREN_OF, chain_id, addresses)
    groups = registry.groups_by_factory_id
    unknown = list({row["factory_id"] for row in rows} - groups.keys())
    if unknown:
        for factory in await conn.fetch(_FACTORIES, unknown):
            groups[factory["id"]] = registry.factory_groups.get(Factory(
                factory["chain_id"], factory["address"], factory["topic0"],
                factory["child_topic"], factory["child_offset"]))
    found: dict[str, list[tuple[FactoryGroup, int]]] = {}
    for child, factory_id, created in rows:
        group = groups.get(factory_id)
        if group is not None:
            found.setdefault(child, []).append((group, created))
    return {address: tuple(created_by) for address, created_by in found.items()}

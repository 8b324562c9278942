"""Factories: contracts that create the contracts a trigger watches (every pair a Uniswap V2
factory creates, every proxy a Safe factory deploys).

A factory trigger names the factory's address, its creation event and the event's parameter
holding the child's address (``triggers.factory_*``). :func:`factory_of` validates that and
returns where the child's address sits in a creation log: a topic (an ``indexed`` parameter) or a
32-byte word of ``data`` (a static parameter), the same places a log's decoder reads.

The children themselves live in ``factory_children``, maintained by the database from the
stored events, whoever writes them (indexer, replay): a statement-level trigger on ``events``
inserts a child for every valid creation log of a registered factory (in the inserting
transaction, so a child is visible exactly when its creation is), and one on updates deletes the
children whose creation log was invalidated by a reorg. Registering a factory
(:func:`register_factories`) records it in ``factories`` and derives its children from the
creation logs stored before it; it never blocks ingest (see its docstring for the ordering that
keeps a creation from slipping between the two).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from core.errors import InvalidTrigger

if TYPE_CHECKING:
    # Imported where used: eth-abi (and eth-utils under it) is ~60 ms of start-up that only the
    # processor, which validates factory triggers, needs; the indexer only loads registered
    # factories (``ingest.factories``).
    from eth_abi.grammar import ABIType

    from core.abi import EventSignature

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclass(frozen=True, slots=True)
class Factory:
    """A registered factory: creation logs are those of ``address`` with ``topic0``; the child's
    address is in topic ``child_topic`` (1–3), or, when it is 0, in the data word starting at
    byte ``child_offset``. Addresses and hashes are lowercase."""

    chain_id: int
    address: str
    topic0: str
    child_topic: int
    child_offset: int

    def child_of(self, topic1: str | None, topic2: str | None, topic3: str | None,
                 data: str) -> str | None:
        """The child created by a creation log (lowercase), or ``None`` when the log is too
        short to hold one. Same rule as the database's ``blockhook_child_address``."""
        if self.child_topic:
            topic = (topic1, topic2, topic3)[self.child_topic - 1]
            if topic is None or len(topic) != 66:
                return None
            return "0x" + topic[26:].lower()
        start = 2 + 2 * self.child_offset
        if len(data) < start + 64:
            return None
        return "0x" + data[start + 24:start + 64].lower()


def _head_words(abi_type: ABIType) -> int:
    """32-byte words a parameter takes in the head of ``data`` (a dynamic one: its offset)."""
    from eth_abi.grammar import TupleType

    if abi_type.is_dynamic:
        return 1
    if abi_type.is_array:
        assert abi_type.arrlist is not None and abi_type.item_type is not None
        return int(abi_type.arrlist[-1][0]) * _head_words(abi_type.item_type)
    if isinstance(abi_type, TupleType):
        return sum(_head_words(component) for component in abi_type.components)
    return 1


def child_location(signature: EventSignature, parameter: str) -> tuple[int, int]:
    """``(child_topic, child_offset)`` of the top-level ``address`` parameter named
    ``parameter``; raises ``InvalidTrigger`` naming what is wrong."""
    from eth_abi.grammar import parse

    from core.abi import arg_name

    topic = 0
    words = 0
    for position, param in enumerate(signature.inputs):
        if arg_name(param, position) == parameter:
            if param.type != "address":
                raise InvalidTrigger(f"factory_parameter {parameter!r} is a {param.type}, not "
                                     "an address")
            return (topic + 1, 0) if param.indexed else (0, 32 * words)
        if param.indexed:
            topic += 1
        else:
            words += _head_words(parse(param.type))
    names = ", ".join(arg_name(p, i) for i, p in enumerate(signature.inputs)) or "none"
    raise InvalidTrigger(f"factory_parameter {parameter!r} is not a parameter of "
                         f"{signature.name} (parameters: {names})")


def factory_of(chain_id: int, address: str, event_signature: str, parameter: str) -> Factory:
    """Validate a trigger's factory columns; raise ``InvalidTrigger`` with a reason for
    ``triggers.error`` (prefixed ``factory_event_signature:`` for a declaration that does not
    parse)."""
    from core.abi import parse_event_signature

    if not _ADDRESS.match(address):
        raise InvalidTrigger(f"factory_address {address!r} is not a 0x address")
    try:
        signature = parse_event_signature(event_signature)
    except InvalidTrigger as error:
        raise InvalidTrigger(f"factory_event_signature: {error}") from None
    child_topic, child_offset = child_location(signature, parameter.strip())
    return Factory(chain_id, address.lower(), signature.topic0, child_topic, child_offset)


# ---------------------------------------------------------------------------- database

_REGISTER = """
INSERT INTO factories (chain_id, address, topic0, child_topic, child_offset)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::smallint[], $5::int[])
ON CONFLICT (chain_id, address, topic0, child_topic, child_offset) DO NOTHING
RETURNING id"""

# Waits for every transaction writing events at this moment (a SHARE lock conflicts with their
# ROW EXCLUSIVE) and releases at once: after it, each such writer has committed, and every later
# one saw the new factories when its trigger ran.
_BARRIER = "LOCK TABLE events IN SHARE MODE"

_BACKFILL = """
INSERT INTO factory_children (factory_id, chain_id, child_address, block_number, block_hash,
                              block_time, log_index, event_id)
SELECT f.id, e.chain_id, c.child, e.block_number, e.block_hash, e.block_time, e.log_index, e.id
FROM factories f
JOIN events e ON e.chain_id = f.chain_id AND e.address = f.address AND e.topic0 = f.topic0
CROSS JOIN LATERAL blockhook_child_address(f.child_topic, f.child_offset, e.topic1, e.topic2,
                                           e.topic3, e.data) AS c(child)
WHERE f.id = ANY($1::bigint[]) AND NOT e.invalidated AND c.child IS NOT NULL
ON CONFLICT DO NOTHING"""

_LOAD = "SELECT chain_id, address, topic0, child_topic, child_offset FROM factories"


async def register_factories(conn: asyncpg.Connection, factories: Iterable[Factory]) -> int:
    """Record the factories not registered yet and derive their children from the creation logs
    already stored. Three short transactions on ``conn`` (not inside one of the caller's):
    register; wait for the writers in flight (they may have inserted creation logs without
    seeing the new rows); backfill. A creation log is thus either stored before the backfill
    reads or inserted by a writer that sees the factory. Idempotent; returns how many were new."""
    wanted = sorted(set(factories), key=lambda f: (f.chain_id, f.address, f.topic0,
                                                    f.child_topic, f.child_offset))
    if not wanted:
        return 0
    known = set(await load_factories(conn))
    missing = [factory for factory in wanted if factory not in known]
    if not missing:
        return 0
    async with conn.transaction():
        ids = [row["id"] for row in await conn.fetch(
            _REGISTER, [f.chain_id for f in missing], [f.address for f in missing],
            [f.topic0 for f in missing], [f.child_topic for f in missing],
            [f.child_offset for f in missing])]
    if not ids:
        return 0  # registered concurrently by another processor, which backfills
    async with conn.transaction():
        await conn.execute(_BARRIER)
    await conn.execute(_BACKFILL, ids)
    return len(ids)


async def load_factories(conn: asyncpg.Connection, chain_id: int | None = None) -> list[Factory]:
    """The registered factories (of one chain)."""
    if chain_id is None:
        rows = await conn.fetch(_LOAD)
    else:
        rows = await conn.fetch(_LOAD + " WHERE chain_id = $1", chain_id)
    return [Factory(row["chain_id"], row["address"], row["topic0"], row["child_topic"],
                    row["child_offset"]) for row in rows]


_CHILDREN = """
SELECT c.child_address, min(c.block_number) AS created
FROM factory_children c
WHERE c.chain_id = $1
GROUP BY c.child_address"""


async def load_children(conn: asyncpg.Connection, chain_id: int) -> dict[str, int]:
    """Every child of the chain's registered factories, with the first block it was created in."""
    return {row["child_address"]: row["created"] for row in await conn.fetch(_CHILDREN, chain_id)}


def new_children(factories: Sequence[Factory], logs: Iterable[tuple[int, str, str | None,
                 str | None, str | None, str | None, str]]) -> dict[str, int]:
    """Children created by ``logs`` — ``(block_number, address, topic0, topic1, topic2, topic3,
    data)`` tuples — with their creation block (the first one, if created twice)."""
    by_key: dict[tuple[str, str], list[Factory]] = {}
    for factory in factories:
        by_key.setdefault((factory.address, factory.topic0), []).append(factory)
    found: dict[str, int] = {}
    for block_number, address, topic0, topic1, topic2, topic3, data in logs:
        if topic0 is None:
            continue
        for factory in by_key.get((address, topic0), ()):
            child = factory.child_of(topic1, topic2, topic3, data)
            if child is not None and block_number < found.get(child, block_number + 1):
                found[child] = block_number
    return found

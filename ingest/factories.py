"""Factory children under ``INGEST_ADDRESSES``: which addresses a filtered indexer asks for.

With an address filter, a factory trigger needs more than the listed contracts: the factory's
own logs (its creation events) and its children's. :class:`ChildWatch` holds the chain's
registered factories (``core.factories``; the processor registers them when it loads the
triggers) and their children, read back from the database before each catch-up, plus the children
discovered in ranges fetched since.

:func:`fetch_with_children` fetches one range with the listed addresses, the factories and the
known children. When the proven range holds creation logs of children not asked for, it fetches
the range again including them, so their logs — from the creation block on, a same-block or
same-transaction one included — are stored in the range, and the transaction, that stores their
creation. The refetched range is proven like any other (``ingest.completeness``) with the address
list it was fetched with. Above :data:`MAX_FILTER_ADDRESSES` addresses the range is fetched
whole (what Ponder does for large factory families), proven against every block's
``logsBloom``, and filtered here.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from core.factories import Factory, load_children, load_factories, new_children
from ingest.fetch import Batch, RangeFetcher
from ingest.rpc import Log

# An eth_getLogs address list longer than this is not sent: providers cap the list (or the
# request size) and a full range answer filtered here is cheaper than many split requests.
MAX_FILTER_ADDRESSES = 1000


class ChildWatch:
    """The address filter of one chain's indexer: ``listed`` (``INGEST_ADDRESSES``), the
    registered factories and their children (lowercase)."""

    def __init__(self, chain_id: int, listed: Sequence[str]) -> None:
        self.chain_id = chain_id
        self.listed = [address.lower() for address in listed]
        self.factories: list[Factory] = []
        self.children: dict[str, int] = {}  # child → block it was created in

    async def refresh(self, conn: asyncpg.Connection) -> None:
        """Read the registered factories and their children back (outside any transaction:
        what committed is what counts; children found in ranges not stored are dropped)."""
        self.factories = await load_factories(conn, self.chain_id)
        self.children = await load_children(conn, self.chain_id) if self.factories else {}

    def addresses(self) -> set[str]:
        return {*self.listed, *(f.address for f in self.factories), *self.children}

    def discover(self, logs: Sequence[Log]) -> dict[str, int]:
        """Children created by ``logs`` that are not known yet (now known)."""
        found = new_children(self.factories, ((entry.block_number, entry.address, entry.topic0,
                                               entry.topic1, entry.topic2, entry.topic3,
                                               entry.data) for entry in logs))
        unseen = {child: block for child, block in found.items() if child not in self.children}
        self.children.update(unseen)
        return unseen


async def fetch_with_children(fetcher: RangeFetcher, watch: ChildWatch, first: int,
                              target: int) -> Batch:
    """The proven range from ``first`` (at most to ``target``) with the logs of every listed
    address, factory and child — children created inside the range included."""
    if not watch.factories:
        fetcher.addresses = list(watch.listed)
        return await fetcher.fetch(first, target)
    while True:
        wanted = watch.addresses()
        whole = len(wanted) > MAX_FILTER_ADDRESSES
        fetcher.addresses = [] if whole else sorted(wanted)
        batch = await fetcher.fetch(first, target)
        unseen = watch.discover(batch.logs)
        if whole:
            wanted |= unseen.keys()
            return Batch(batch.headers, [entry for entry in batch.logs if entry.address in wanted])
        if not unseen:
            return batch
        # Ask again for the range just proven, with its new children (one more round at most:
        # children are not factories, so the answer cannot reveal more).
        target = batch.last

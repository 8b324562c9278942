"""Where ingest stops: ``head − CONFIRMATIONS`` blocks, or the node's ``finalized``/``safe`` block.

``CONFIRMATIONS=finalized`` (or ``safe``) follows the chain's own finality instead of a fixed
depth, on chains whose nodes serve those block tags (Ethereum since the Merge, most L2s, anvil).
:func:`check_finality_tag` runs once at start: a node that does not know the tag is a
configuration error (exit 1, one line), not something to retry forever. A node that knows the
tag but has no such block yet (a young chain) gives no target: nothing is final, nothing is
ingested, the indexer waits.
"""

from __future__ import annotations

import asyncio

from core.backoff import backoff_delay
from core.errors import ConfigError
from ingest.rpc import ChainSource, RpcNodeError

# Node errors to see in a row before concluding the tag is not supported (a node's transient
# internal error must not stop the indexer).
TAG_PROBES = 3


async def ingest_target(source: ChainSource, confirmations: int | str) -> tuple[int, int]:
    """``(head, target)``: the node's head and the last block to ingest now (``-1``: none)."""
    head = await source.head()
    if isinstance(confirmations, int):
        return head, head - confirmations
    tagged = await source.tagged_header(confirmations)
    if tagged is None:
        return head, -1
    return head, min(head, tagged.number)


async def check_finality_tag(source: ChainSource, tag: str) -> None:
    """Raise ``ConfigError`` when the node refuses the ``tag`` block (``TAG_PROBES`` node
    errors in a row); transport errors propagate to the caller's retry."""
    for attempt in range(1, TAG_PROBES + 1):
        try:
            await source.tagged_header(tag)
            return
        except RpcNodeError as error:
            if attempt == TAG_PROBES:
                raise ConfigError(
                    f"CONFIRMATIONS={tag}: the node does not serve a {tag!r} block "
                    f"({error.node_message or error}); this chain's nodes may not support the "
                    f"tag: set CONFIRMATIONS to a number of blocks") from None
            await asyncio.sleep(backoff_delay(attempt))

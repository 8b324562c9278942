"""The reorg detector: block-hash comparison against the stored window, and the one transaction
that rolls the stored chain back to the common ancestor.

Detection (guarantee 2): before a range is written its first header's ``parentHash`` must equal
the checkpoint's hash, and at the head the stored hashes of the last ``REORG_WINDOW`` blocks are
re-checked every poll with one batched request (:func:`detect`).

**Unknown is not different.** A node behind a load balancer may not have our newest blocks yet:
``null`` headers, a head below our checkpoint. That means "not seen yet" and is never a reorg.
A reorg is recorded only when the node *serves an alternative chain*: a header at some stored
height with another hash, and from there up to our checkpoint's height an unbroken run of served
headers, each linking to the previous one by ``parentHash``, the lowest linking to a stored
block — the common ancestor. Anything less (a gap, a broken link, a mix of answers from nodes on
different chains) is :class:`Unconfirmed`: nothing is written, the next poll looks again. The
poller reads the window a second time before acting on a reorg, so a mismatch the next read does
not confirm is not one either. Only blocks the alternative chain replaces (above the ancestor) are
invalidated. If the alternative chain replaces every stored block of the window, the reorg is
deeper than the window and the indexer stops with :class:`core.errors.ReorgTooDeep`, naming the
replay command — it never writes past a fork it cannot see the bottom of.

The rollback (:func:`apply_reorg`) invalidates events above the ancestor with a ``block_time``
bound of ``block_time >= ancestor.time``. It cannot hide an event: every stored event above the
ancestor belongs to a block that was written only after its ``parentHash`` chained to the stored
chain, so it descends from the ancestor, and a descendant's timestamp is never below its
ancestor's (consensus rule on every EVM chain). The bound lets TimescaleDB skip older chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from core.errors import ReorgTooDeep
from ingest.rpc import Header
from ingest.store import Checkpoint, StoredBlock, save_checkpoint

# $1 chain, $2 ancestor number, $3 ancestor time: the bound lets TimescaleDB skip older chunks.
INVALIDATE_ABOVE_ANCESTOR = """
UPDATE events SET invalidated = true, invalidated_at = now()
WHERE chain_id = $1 AND block_number > $2 AND block_time >= $3 AND NOT invalidated"""


@dataclass(frozen=True, slots=True)
class Reorg:
    """A detected reorg: the stored chain from ``ancestor`` + 1 up to ``old_head`` is orphaned."""

    chain_id: int
    ancestor: StoredBlock
    old_head: Checkpoint
    new_head_hash: str

    @property
    def depth(self) -> int:
        return self.old_head.number - self.ancestor.number


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """The node disagrees with a stored hash, but does not serve a linked alternative chain up
    to our height (yet): not a reorg; look again next poll."""

    height: int
    reason: str


def detect(chain_id: int, checkpoint: Checkpoint, stored: Sequence[StoredBlock],
           canonical: Mapping[int, Header | None], *, window: int) -> Reorg | Unconfirmed | None:
    """Compare the stored window (highest first) with the node's headers at the same heights.

    Returns ``None`` when every header the node has agrees (``None`` headers — blocks it has not
    seen — agree with anything), :class:`Unconfirmed` when a mismatch is not backed by a linked
    alternative chain up to the checkpoint's height, a :class:`Reorg` when it is; raises
    ``ReorgTooDeep`` when that alternative chain replaces the whole window."""
    by_height = {block.number: block for block in stored}
    differing = [block.number for block in stored
                 if (header := canonical.get(block.number)) is not None and header.hash != block.hash]
    if not differing:
        return None
    fork = min(differing)
    top = checkpoint.number
    for height in range(fork, top + 1):
        header = canonical.get(height)
        if header is None:
            return Unconfirmed(height, f"the node has no block {height} (behind): the chain it "
                                       f"serves does not reach our block {top}")
        below = canonical.get(height - 1) if height > fork else None
        if below is not None and header.parent_hash != below.hash:
            return Unconfirmed(height, f"block {height} does not link to block {height - 1} as "
                                       "served: answers from different chains")
    ancestor = by_height.get(fork - 1)
    if ancestor is None:
        lowest = min(by_height)
        if fork != lowest:
            return Unconfirmed(fork, f"no stored block below {fork} to link to")
        raise ReorgTooDeep(
            f"reorg deeper than REORG_WINDOW={window} on chain {chain_id}: none of the stored "
            f"blocks {lowest}..{checkpoint.number} is on the node's chain; stopped without writing. "
            f"Run: python scripts/replay.py --chain-id {chain_id} --from-block {lowest} "
            f"(or lower, from below the fork), then restart the indexer")
    first_new = canonical[fork]
    assert first_new is not None
    if first_new.parent_hash != ancestor.hash:
        return Unconfirmed(fork, f"the node's block {fork} does not link to our block {fork - 1}: "
                                 "the fork is deeper than the blocks it served")
    new_head = canonical[top]
    assert new_head is not None
    return Reorg(chain_id, ancestor, checkpoint, new_head.hash)


def same_reorg(first: Reorg, second: Reorg) -> bool:
    """Whether two reads describe the same reorg (same ancestor, same new block at our height)."""
    return (first.ancestor.number, first.ancestor.hash, first.new_head_hash) == \
        (second.ancestor.number, second.ancestor.hash, second.new_head_hash)


async def apply_reorg(conn: asyncpg.Connection, reorg: Reorg) -> int:
    """In the caller's transaction: invalidate events above the ancestor, delete the orphaned
    ``blocks`` rows, move the checkpoint to the ancestor and insert the ``reorgs`` row (whose
    trigger NOTIFYs the processor). Returns the number of events invalidated."""
    status = await conn.execute(INVALIDATE_ABOVE_ANCESTOR, reorg.chain_id, reorg.ancestor.number,
                                reorg.ancestor.time)
    invalidated = int(status.rsplit(" ", 1)[1])
    await conn.execute("DELETE FROM blocks WHERE chain_id = $1 AND number > $2",
                       reorg.chain_id, reorg.ancestor.number)
    await save_checkpoint(conn, reorg.chain_id, Checkpoint(reorg.ancestor.number, reorg.ancestor.hash))
    await conn.execute(
        """INSERT INTO reorgs (chain_id, depth, common_ancestor, old_head_hash, new_head_hash,
                               events_invalidated)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        reorg.chain_id, reorg.depth, reorg.ancestor.number, reorg.old_head.hash,
        reorg.new_head_hash, invalidated)
    return invalidated

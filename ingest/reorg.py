"""The reorg detector: block-hash comparison against the stored window, and the one transaction
that rolls the stored chain back to the common ancestor.

Detection (guarantee 2): before a range is written its first header's ``parentHash`` must equal
the checkpoint's hash, and at the head the stored hashes of the last ``REORG_WINDOW`` blocks are
re-checked every poll with one batched request. On a mismatch the stored blocks are walked down
until the node agrees (:func:`find_ancestor`); if none of the window agrees the reorg is deeper
than the window and the indexer stops with :class:`core.errors.ReorgTooDeep`, naming the replay
command — it never writes past a fork it cannot see the bottom of.

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


def diverges(stored: Sequence[StoredBlock], canonical: Mapping[int, Header | None]) -> bool:
    """Whether any stored block's hash differs from the node's block at that height."""
    for block in stored:
        header = canonical.get(block.number)
        if header is None or header.hash != block.hash:
            return True
    return False


def find_ancestor(stored: Sequence[StoredBlock],
                  canonical: Mapping[int, Header | None]) -> StoredBlock | None:
    """The highest stored block the node agrees with (``stored`` is highest first), or ``None``
    when the whole window diverges."""
    for block in stored:
        header = canonical.get(block.number)
        if header is not None and header.hash == block.hash:
            return block
    return None


def detect(chain_id: int, checkpoint: Checkpoint, stored: Sequence[StoredBlock],
           canonical: Mapping[int, Header | None], *, window: int) -> Reorg | None:
    """Compare the stored window with the node's headers at the same heights.

    Returns ``None`` when they agree, a :class:`Reorg` when they diverge above a common
    ancestor, and raises ``ReorgTooDeep`` when nothing in the window agrees."""
    if not stored or not diverges(stored, canonical):
        return None
    ancestor = find_ancestor(stored, canonical)
    if ancestor is None:
        lowest = min(block.number for block in stored)
        raise ReorgTooDeep(
            f"reorg deeper than REORG_WINDOW={window} on chain {chain_id}: none of the stored "
            f"blocks {lowest}..{checkpoint.number} is on the node's chain; stopped without writing. "
            f"Run: python scripts/replay.py --chain-id {chain_id} --from-block {lowest} "
            f"(or lower, from below the fork), then restart the indexer")
    replacements = [h for n, h in sorted(canonical.items(), reverse=True) if h is not None]
    new_head = canonical.get(checkpoint.number) or (replacements[0] if replacements else None)
    return Reorg(chain_id, ancestor, checkpoint, new_head.hash if new_head else "")


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

"""Reorgs with ``anvil_reorg`` (guarantee 2): exactly the orphaned events are invalidated, the new
canonical events are ingested, the ``reorgs`` row is right, and the checkpoint follows the chain.
Runs on both storage backends (the invalidating UPDATE works on the hypertable)."""

from __future__ import annotations

import pytest
from web3.contract import Contract

from tests.ingest.conftest import (
    chain_logs,
    checkpoint_of,
    emit_blocks,
    fetch,
    ingest_settings,
    running_indexer,
    stored_logs,
    wait_for_checkpoint,
    wait_until,
)
from tests.support.anvil import Anvil


@pytest.mark.parametrize("replacements", [False, True], ids=["empty", "replacement-txs"])
@pytest.mark.parametrize("depth", [1, 5])
async def test_anvil_reorg_invalidates_exactly_the_orphaned_events(
        db_url: str, anvil: Anvil, emitter: Contract, depth: int, replacements: bool) -> None:
    emit_blocks(emitter, 8, 6)
    async with running_indexer(ingest_settings(db_url, anvil.url, max_block_range=4)):
        await wait_for_checkpoint(db_url, anvil)
        before = set(await stored_logs(db_url))
        old_head = anvil.rpc("eth_getBlockByNumber", "latest", False)
        head = int(old_head["number"], 16)
        ancestor = head - depth
        orphaned = {row for row in before if row[0] > ancestor}
        assert orphaned, "the orphaned blocks must carry events for this test to mean anything"

        pairs = []
        if replacements:
            w3 = emitter.w3
            call = emitter.functions.emitMany(3).build_transaction(
                {"from": w3.eth.accounts[0], "gas": 500_000})
            tx = {"from": call["from"], "to": call["to"], "data": call["data"], "gas": hex(500_000)}
            pairs = [[tx, offset] for offset in range(depth)]
        anvil.rpc("anvil_reorg", depth, pairs)

        async def reorg_recorded() -> bool:
            return bool(await fetch(db_url, "SELECT 1 FROM reorgs"))
        await wait_until(reorg_recorded, what="the reorgs row")
        await wait_for_checkpoint(db_url, anvil)

    invalidated = await stored_logs(db_url, invalidated=True)
    assert set(invalidated) == orphaned and len(invalidated) == len(orphaned)
    valid = await stored_logs(db_url)
    assert len(valid) == len(set(valid))
    assert set(valid) == chain_logs(anvil)
    if replacements:
        assert {row[0] for row in valid if row[0] > ancestor} == set(range(ancestor + 1, head + 1))
    [reorg] = await fetch(db_url, "SELECT * FROM reorgs")
    new_head = anvil.rpc("eth_getBlockByNumber", "latest", False)
    assert (reorg["chain_id"], reorg["depth"], reorg["common_ancestor"]) == (31337, depth, ancestor)
    assert reorg["old_head_hash"] == old_head["hash"]
    assert reorg["new_head_hash"] == new_head["hash"]
    assert reorg["events_invalidated"] == len(orphaned)
    assert await checkpoint_of(db_url) == (head, new_head["hash"])
    times = await fetch(db_url, "SELECT count(*) AS n FROM events WHERE invalidated AND invalidated_at IS NULL")
    assert times[0]["n"] == 0
    blocks = await fetch(db_url, "SELECT number, hash FROM blocks WHERE number > $1 ORDER BY number",
                         ancestor)
    assert [b["hash"] for b in blocks] == [
        anvil.rpc("eth_getBlockByNumber", hex(n), False)["hash"] for n in range(ancestor + 1, head + 1)]


async def test_reorg_deeper_than_the_window_stops_with_the_replay_command(
        plain_db_url: str, anvil: Anvil, emitter: Contract) -> None:
    import asyncio

    from core.errors import ReorgTooDeep
    from ingest.poller import Indexer
    from ingest.rpc import JsonRpcClient

    emit_blocks(emitter, 6, 2)
    settings = ingest_settings(plain_db_url, anvil.url, reorg_window=3)
    async with running_indexer(settings):
        await wait_for_checkpoint(plain_db_url, anvil)
    before = await checkpoint_of(plain_db_url)
    anvil.rpc("anvil_reorg", 5, [])
    async with JsonRpcClient(anvil.url) as source:
        with pytest.raises(ReorgTooDeep) as raised:
            await asyncio.wait_for(Indexer(settings, source).run(asyncio.Event()), 30)
    message = str(raised.value)
    assert "REORG_WINDOW=3" in message and "\n" not in message
    assert "python scripts/replay.py --chain-id 31337 --from-block" in message
    assert await checkpoint_of(plain_db_url) == before  # nothing written
    assert not await stored_logs(plain_db_url, invalidated=True)


async def test_reorg_while_the_indexer_was_down_is_caught_by_the_parent_hash_check(
        db_url: str, anvil: Anvil, emitter: Contract) -> None:
    emit_blocks(emitter, 6, 3)
    settings = ingest_settings(db_url, anvil.url, max_block_range=3)
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
    head = anvil.head()
    orphaned = {row for row in await stored_logs(db_url) if row[0] > head - 2}
    anvil.rpc("anvil_reorg", 2, [])
    emit_blocks(emitter, 4, 2)  # the node is now ahead: the indexer resumes by catching up
    async with running_indexer(settings) as indexer:
        await wait_for_checkpoint(db_url, anvil)
        assert indexer.metrics.reorgs._value.get() == 1
    assert set(await stored_logs(db_url, invalidated=True)) == orphaned
    assert set(await stored_logs(db_url)) == chain_logs(anvil)
    [reorg] = await fetch(db_url, "SELECT depth, common_ancestor FROM reorgs")
    assert tuple(reorg) == (2, head - 2)


def _mine_branch(anvil: Anvil, emitter: Contract, logs_per_block: list[int], *,
                 first_timestamp: int) -> None:
    """One block per entry, fully determined (timestamp, base fee, nonce, fees, gas): mining the
    same entries again from the same parent reproduces the same block hashes."""
    w3 = emitter.w3
    sender = w3.eth.accounts[0]
    for offset, logs in enumerate(logs_per_block):
        anvil.rpc("evm_setNextBlockTimestamp", hex(first_timestamp + offset))
        anvil.rpc("anvil_setNextBlockBaseFeePerGas", hex(10**9))
        call = emitter.functions.emitMany(logs).build_transaction({
            "from": sender, "gas": 500_000, "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9, "nonce": w3.eth.get_transaction_count(sender)})
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction(call))


async def test_a_reorg_that_is_undone_stores_the_returning_logs_as_valid_again(
        db_url: str, anvil: Anvil, emitter: Contract) -> None:
    """A → B → A: the chain abandons blocks, then returns to exactly those blocks (same hashes).
    Their logs were invalidated by the first reorg; after the second they must be stored as
    valid events again — once each — while their invalidated twins stay as history."""
    base = int(anvil.rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16) + 10
    snapshot = anvil.rpc("evm_snapshot")
    branch_a = [2, 3, 1]
    async with running_indexer(ingest_settings(db_url, anvil.url, max_block_range=4)):
        _mine_branch(anvil, emitter, branch_a, first_timestamp=base)
        await wait_for_checkpoint(db_url, anvil)
        logs_a = set(await stored_logs(db_url))
        hashes_a = [anvil.rpc("eth_getBlockByNumber", hex(anvil.head() - n), False)["hash"]
                    for n in range(len(branch_a))]

        assert anvil.rpc("evm_revert", snapshot)
        snapshot = anvil.rpc("evm_snapshot")
        _mine_branch(anvil, emitter, [4, 4, 4, 4], first_timestamp=base + 100)
        await wait_for_checkpoint(db_url, anvil)
        logs_b = {row for row in await stored_logs(db_url) if row not in logs_a}
        assert set(await stored_logs(db_url, invalidated=True)) >= {
            row for row in logs_a if row[1] in hashes_a}

        assert anvil.rpc("evm_revert", snapshot)
        _mine_branch(anvil, emitter, [*branch_a, 1, 1], first_timestamp=base)
        assert [anvil.rpc("eth_getBlockByNumber", hex(anvil.head() - 2 - n), False)["hash"]
                for n in range(len(branch_a))] == hashes_a, "branch A must come back identical"
        await wait_for_checkpoint(db_url, anvil)

    valid = await stored_logs(db_url)
    assert len(valid) == len(set(valid)) and set(valid) == chain_logs(anvil)
    returning = {row for row in logs_a if row[1] in hashes_a}
    assert returning and returning <= set(valid)
    invalidated = await stored_logs(db_url, invalidated=True)
    assert returning <= set(invalidated) and logs_b <= set(invalidated)
    assert len(await fetch(db_url, "SELECT 1 FROM reorgs")) == 2

"""Factory children through the real indexer, with the real Uniswap V2 factory and pairs on
anvil, on both backends: with ``INGEST_ADDRESSES`` the factory's logs and every pair's are
ingested, a pair created and swapped on in one block included (during catch-up and at the head),
with the address list sent or, past ``MAX_FILTER_ADDRESSES``, whole ranges filtered here; a pair
created in a block a reorg orphans leaves ``factory_children`` and its matched deliveries are
corrected; a replay that finds children backfills their later logs."""

from __future__ import annotations

import asyncpg
import pytest

from core.db import connect
from core.factories import factory_of, register_factories
from ingest import factories as ingest_factories
from ingest.replay import replay
from ingest.rpc import JsonRpcClient
from processor.batches import process_batches
from processor.corrections import correct_reorgs
from processor.registry import load_registry
from tests.ingest.conftest import (
    chain_logs,
    fetch,
    ingest_settings,
    running_indexer,
    stored_logs,
    wait_for_checkpoint,
    wait_until,
)
from tests.support.anvil import Anvil
from tests.support.contracts import deploy_erc20, transact
from tests.support.uniswap import ETH, PAIR_CREATED, SWAP, UniswapV2

CHAIN = 31337
LARGE = {"any": [{"field": "amount0In", "op": "gte", "value": str(100 * ETH)},
                 {"field": "amount1In", "op": "gte", "value": str(100 * ETH)}]}


async def _register(db_url: str, uni: UniswapV2) -> None:
    """What the processor does when it loads a factory trigger."""
    conn = await asyncpg.connect(db_url)
    try:
        await register_factories(conn, [factory_of(CHAIN, uni.factory.address, PAIR_CREATED,
                                                   "pair")])
    finally:
        await conn.close()


async def _children(db_url: str) -> dict[str, int]:
    rows = await fetch(db_url, "SELECT child_address, block_number FROM factory_children")
    return {row["child_address"]: row["block_number"] for row in rows}


def _block_of_creation(anvil: Anvil, uni: UniswapV2, pair: str) -> int:
    topic0 = factory_of(CHAIN, uni.factory.address, PAIR_CREATED, "pair").topic0
    for log in anvil.rpc("eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest",
                                         "address": uni.factory.address, "topics": [topic0]}):
        if log["data"][26:66].lower() == pair[2:]:
            return int(log["blockNumber"], 16)
    raise AssertionError(f"{pair} was never created")


@pytest.mark.parametrize("mode", ["all-logs", "INGEST_ADDRESSES", "whole-ranges"])
async def test_pairs_logs_are_ingested_with_their_creation(
        db_url: str, anvil: Anvil, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if mode == "whole-ranges":
        monkeypatch.setattr(ingest_factories, "MAX_FILTER_ADDRESSES", 1)
    uni = UniswapV2(anvil.url)
    try:
        listed = deploy_erc20(uni.w3, "Listed", "LST")
        transact(uni.w3, listed.functions.mint(uni.deployer, 5))
        await _register(db_url, uni)
        token0, token1 = uni.tokens()
        pair_a = uni.create_pair(token0, token1)
        uni.add_liquidity(token0, token1, 1_000 * ETH, 1_000 * ETH)
        uni.swap(token0, token1, 150 * ETH, (1_000 * ETH, 1_000 * ETH))
        pair_b = uni.create_and_swap(200 * ETH)  # during the catch-up, in a many-block range
        settings = ingest_settings(db_url, anvil.url, max_block_range=500,
                                   ingest_addresses="" if mode == "all-logs" else listed.address)
        async with running_indexer(settings):
            await wait_for_checkpoint(db_url, anvil)
            pair_c = uni.create_and_swap(300 * ETH)  # at the head: a one-block range
            await wait_for_checkpoint(db_url, anvil)
        wanted = {listed.address.lower(), uni.factory.address.lower(), pair_a, pair_b, pair_c}
        expected = {row for row in chain_logs(anvil)
                    if mode == "all-logs" or row[5] in wanted}
        stored = await stored_logs(db_url)
        assert len(stored) == len(set(stored)) and set(stored) == expected
        swap_topic = factory_of(CHAIN, pair_a, SWAP, "to").topic0
        swaps = {(row[5], row[0]) for row in stored if row[6] == swap_topic}
        children = await _children(db_url)
        assert children == {pair: _block_of_creation(anvil, uni, pair)
                            for pair in (pair_a, pair_b, pair_c)}
        # Created and swapped on in one block: both stored, in that block.
        assert {(pair_b, children[pair_b]), (pair_c, children[pair_c])} <= swaps
        assert uni.factory.functions.allPairsLength().call() == 3
    finally:
        uni.close()


@pytest.mark.parametrize("filtered", [False, True], ids=["all-logs", "INGEST_ADDRESSES"])
async def test_a_pair_created_in_an_orphaned_block_stops_matching(
        db_url: str, anvil: Anvil, filtered: bool) -> None:
    """Indexer and processor units of work in-process: every Uniswap V2 pair's Swap over
    100 ETH fires exactly once per live swap; a pair whose creation is orphaned leaves the
    children, and its delivered swap gets its ``removed``."""
    uni = UniswapV2(anvil.url)
    conn = await connect(db_url)
    try:
        trigger_id = await conn.fetchval(
            """INSERT INTO triggers (name, chain_id, event_signature, conditions,
                                     factory_address, factory_event_signature, factory_parameter)
               VALUES ('large-swaps-any-pair', $1, $2, $3, $4, $5, 'pair') RETURNING id""",
            CHAIN, SWAP, LARGE, uni.factory.address, PAIR_CREATED)
        await conn.execute("INSERT INTO actions (trigger_id, config) VALUES ($1, $2)", trigger_id,
                           {"url": "https://example.com/hook"})
        registry = await load_registry(conn)  # registers the factory
        kept = uni.create_and_swap(500 * ETH)
        small = uni.create_and_swap(5 * ETH)  # below the threshold: a child, never a match
        settings = ingest_settings(db_url, anvil.url,
                                   ingest_addresses=uni.deployer if filtered else "")
        async with running_indexer(settings):
            await wait_for_checkpoint(db_url, anvil)
            await process_batches(conn, registry, max_events=10_000)
            await conn.execute("UPDATE deliveries SET status = 'delivered'")
            orphaned = uni.create_and_swap(700 * ETH)
            await wait_for_checkpoint(db_url, anvil)
            await process_batches(conn, registry, max_events=10_000)
            await conn.execute("UPDATE deliveries SET status = 'delivered'")
            assert set(await _children(db_url)) == {kept, small, orphaned}
            anvil.rpc("anvil_reorg", 1, [])  # the block creating `orphaned` is replaced

            async def reorg_recorded() -> bool:
                return bool(await fetch(db_url, "SELECT 1 FROM reorgs"))
            await wait_until(reorg_recorded, what="the reorg")
            await wait_for_checkpoint(db_url, anvil)
            # The orphaned pair's address emits again on the new branch? It cannot: it was
            # never created there. Its old child row is gone with its creation log.
            assert set(await _children(db_url)) == {kept, small}
            corrections = await correct_reorgs(conn)
            assert len(corrections.removed_ids) == 1
            await process_batches(conn, registry, max_events=10_000)
        rows = await conn.fetch(
            """SELECT e.address, e.invalidated, d.kind FROM deliveries d
               JOIN events e ON e.id = d.event_id ORDER BY d.id""")
        assert [(r["address"], r["invalidated"], r["kind"]) for r in rows] == [
            (kept, False, "matched"), (orphaned, True, "matched"), (orphaned, True, "removed")]
    finally:
        await conn.close()
        uni.close()


async def test_a_replay_backfills_the_children_it_finds(db_url: str, anvil: Anvil) -> None:
    """The factory was registered after the filtered indexer had passed its pair's creation:
    the replay of the creation's range stores it, and the pair's later logs (past the replay's
    end, up to the checkpoint) are backfilled."""
    uni = UniswapV2(anvil.url)
    try:
        listed = deploy_erc20(uni.w3, "Listed", "LST")
        token0, token1 = uni.tokens()
        pair = uni.create_pair(token0, token1)
        uni.add_liquidity(token0, token1, 1_000 * ETH, 1_000 * ETH)
        uni.swap(token0, token1, 150 * ETH, (1_000 * ETH, 1_000 * ETH))
        # The creation's block from its log (the head read right after sending may not be it
        # yet on a loaded machine: the replay then covered the block before and found nothing).
        created_at = _block_of_creation(anvil, uni, pair)
        transact(uni.w3, listed.functions.mint(uni.deployer, 5))
        settings = ingest_settings(db_url, anvil.url, ingest_addresses=listed.address)
        async with running_indexer(settings):
            await wait_for_checkpoint(db_url, anvil)
        assert {row[5] for row in await stored_logs(db_url)} == {listed.address.lower()}
        await _register(db_url, uni)
        assert await _children(db_url) == {}  # its creation was never stored
        async with JsonRpcClient(anvil.url) as source:
            result = await replay(settings, source, from_block=created_at, to_block=created_at)
        assert result.logs_added > 1
        assert await _children(db_url) == {pair: created_at}
        wanted = {listed.address.lower(), uni.factory.address.lower(), pair}
        assert set(await stored_logs(db_url)) == {row for row in chain_logs(anvil)
                                                  if row[5] in wanted}
    finally:
        uni.close()

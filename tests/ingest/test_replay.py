"""``ingest.replay``: the library half of ``scripts/replay.py`` (guarantee 8)."""

from __future__ import annotations

import asyncio

import asyncpg
from web3.contract import Contract

from core.db import writer_lock_key
from ingest.replay import replay
from ingest.rpc import JsonRpcClient
from tests.ingest.conftest import (
    chain_logs,
    checkpoint_of,
    emit_blocks,
    fetch,
    ingest_settings,
    running_indexer,
    stored_logs,
    wait_for_checkpoint,
)
from tests.support.anvil import Anvil


async def _ingested(db_url: str, anvil: Anvil, emitter: Contract, blocks: int = 10) -> None:
    emit_blocks(emitter, blocks, 5)
    async with running_indexer(ingest_settings(db_url, anvil.url, max_block_range=4)):
        await wait_for_checkpoint(db_url, anvil)


async def _counts(db_url: str) -> tuple[int, int, int]:
    [row] = await fetch(db_url, """SELECT (SELECT count(*) FROM events) AS events,
                                          (SELECT count(*) FROM event_batches) AS batches,
                                          (SELECT count(*) FROM reorgs) AS reorgs""")
    return row["events"], row["batches"], row["reorgs"]


async def test_replaying_an_ingested_range_changes_nothing(db_url: str, anvil: Anvil,
                                                           emitter: Contract) -> None:
    await _ingested(db_url, anvil, emitter)
    before, checkpoint = await _counts(db_url), await checkpoint_of(db_url)
    progress: list[tuple[int, int]] = []
    async with JsonRpcClient(anvil.url) as source:
        result = await replay(ingest_settings(db_url, anvil.url, max_block_range=3), source,
                              from_block=0, progress=lambda done, total: progress.append((done, total)))
    assert (result.logs_added, result.events_invalidated, result.divergent_blocks) == (0, 0, [])
    assert await _counts(db_url) == before
    assert await checkpoint_of(db_url) == checkpoint
    head = anvil.head()
    assert progress[-1] == (head + 1, head + 1)
    assert [done for done, _ in progress] == sorted({done for done, _ in progress})


async def test_a_gap_comes_back_exactly_and_dry_run_changes_nothing(db_url: str, anvil: Anvil,
                                                                    emitter: Contract) -> None:
    await _ingested(db_url, anvil, emitter)
    deleted = await fetch(db_url, """DELETE FROM events WHERE block_number IN (4, 7)
                                     RETURNING block_hash, log_index""")
    assert len(deleted) == 10
    settings = ingest_settings(db_url, anvil.url)
    before = await _counts(db_url)
    async with JsonRpcClient(anvil.url) as source:
        plan = await replay(settings, source, from_block=2, to_block=8, dry_run=True)
        assert (plan.logs_added, plan.events_invalidated, plan.blocks) == (10, 0, 7)
        assert await _counts(db_url) == before
        result = await replay(settings, source, from_block=2, to_block=8)
    assert result.logs_added == 10
    stored = await stored_logs(db_url)
    assert len(stored) == len(set(stored)) and set(stored) == chain_logs(anvil)
    [batch] = await fetch(db_url, "SELECT row_count FROM event_batches ORDER BY id DESC LIMIT 1")
    assert batch["row_count"] == 10  # only the missing ones reach the processor


async def test_divergent_blocks_are_handled_as_a_reorg(db_url: str, anvil: Anvil,
                                                       emitter: Contract) -> None:
    await _ingested(db_url, anvil, emitter)
    head = anvil.head()
    orphaned = {row for row in await stored_logs(db_url) if row[0] > head - 3}
    anvil.rpc("anvil_reorg", 3, [])  # while no indexer runs
    settings = ingest_settings(db_url, anvil.url)
    async with JsonRpcClient(anvil.url) as source:
        plan = await replay(settings, source, from_block=head - 6, dry_run=True)
        assert plan.divergent_blocks == [head - 2, head - 1, head]
        assert plan.events_invalidated == len(orphaned)
        result = await replay(settings, source, from_block=head - 6)
    assert result.events_invalidated == len(orphaned)
    assert set(await stored_logs(db_url, invalidated=True)) == orphaned
    assert set(await stored_logs(db_url)) == chain_logs(anvil)
    [reorg] = await fetch(db_url, "SELECT depth, common_ancestor, events_invalidated FROM reorgs")
    assert tuple(reorg) == (3, head - 3, len(orphaned))
    new_head = anvil.rpc("eth_getBlockByNumber", "latest", False)["hash"]
    assert await checkpoint_of(db_url) == (head, new_head)  # same height, canonical hash
    # The indexer agrees with what replay left: no further reorg, nothing new.
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
        await asyncio.sleep(0.3)
    assert (await _counts(db_url))[2] == 1


async def test_checkpoint_never_moves_back_and_moves_forward_only_contiguously(
        plain_db_url: str, anvil: Anvil, emitter: Contract) -> None:
    await _ingested(plain_db_url, anvil, emitter, blocks=4)
    checkpoint = await checkpoint_of(plain_db_url)
    assert checkpoint is not None
    emit_blocks(emitter, 4, 2)
    settings = ingest_settings(plain_db_url, anvil.url)
    async with JsonRpcClient(anvil.url) as source:
        await replay(settings, source, from_block=0, to_block=2)
        assert await checkpoint_of(plain_db_url) == checkpoint
        await replay(settings, source, from_block=checkpoint[0] + 2)  # leaves a gap: no move
        assert await checkpoint_of(plain_db_url) == checkpoint
        await replay(settings, source, from_block=checkpoint[0] + 1)
    head = anvil.rpc("eth_getBlockByNumber", "latest", False)
    assert await checkpoint_of(plain_db_url) == (int(head["number"], 16), head["hash"])
    assert set(await stored_logs(plain_db_url)) == chain_logs(anvil)


async def test_replay_waits_for_a_starting_indexers_first_checkpoint_and_resumes_after_a_stop(
        plain_db_url: str, anvil: Anvil, emitter: Contract) -> None:
    emit_blocks(emitter, 12, 3)
    settings = ingest_settings(plain_db_url, anvil.url, max_block_range=2)
    holder = await asyncpg.connect(plain_db_url)
    await holder.execute("SELECT pg_advisory_lock($1)", writer_lock_key(31337))
    waits: list[int | None] = []
    stop = asyncio.Event()

    def progress(done: int, total: int) -> None:
        if done >= 6:
            stop.set()  # like Ctrl-C half-way

    async with JsonRpcClient(anvil.url) as source:
        task = asyncio.ensure_future(replay(settings, source, from_block=0, progress=progress,
                                            on_wait=waits.append, stop=stop))
        await asyncio.sleep(1.5)
        assert not task.done() and waits and waits[0] is not None
        assert not await stored_logs(plain_db_url)
        await holder.close()  # the "indexer" stops
        first = await asyncio.wait_for(task, 30)
        assert first.interrupted and first.last_block is not None
        assert first.last_block < anvil.head()
        partial = await stored_logs(plain_db_url)
        assert partial and max(row[0] for row in partial) <= first.last_block
        second = await replay(settings, source, from_block=0)
    assert not second.interrupted
    assert second.logs_added == len(chain_logs(anvil)) - len(partial)
    assert set(await stored_logs(plain_db_url)) == chain_logs(anvil)

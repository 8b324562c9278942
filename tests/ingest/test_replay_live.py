"""Replay alongside a live indexer (guarantees 1, 2, 8 with both writing): the indexer is never
stopped; a gap below its window is filled while it keeps ingesting; a reorg at the tip during a
replay of older blocks is the indexer's alone; ``kill -9`` of a replay and a resume store every
log exactly once. The part of a range inside the live window is left to the indexer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from web3.contract import Contract

from ingest.replay import replay
from ingest.rpc import JsonRpcClient
from tests.ingest.conftest import (
    ROOT,
    LogRow,
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

WINDOW = 4  # REORG_WINDOW of both the indexer and the replay: keeps the test chain short


async def _assert_exactly_the_chain(db_url: str, anvil: Anvil) -> list[LogRow]:
    valid = await stored_logs(db_url)
    assert len(valid) == len(set(valid)), "no log stored twice"
    assert set(valid) == chain_logs(anvil), "every canonical log stored"
    return valid


def _saved_position(state_home: Path) -> int | None:
    """The resume position a replay saved under ``XDG_STATE_HOME`` (None: no state file)."""
    files = list(state_home.glob("blockhook/replay-*.json"))
    return json.loads(files[0].read_text()).get("ingested_through") if files else None


async def _punch_gap(db_url: str, blocks: list[int]) -> int:
    deleted = await fetch(db_url, "DELETE FROM events WHERE block_number = ANY($1::bigint[]) "
                                  "RETURNING 1", blocks)
    assert deleted, "the gap must hold events for this test to mean anything"
    return len(deleted)


async def test_a_gap_is_filled_under_a_live_indexer(db_url: str, anvil: Anvil,
                                                    emitter: Contract) -> None:
    emit_blocks(emitter, 30, 4)
    anvil.mine(40)  # the gap's blocks fall below the window and the kept blocks
    settings = ingest_settings(db_url, anvil.url, max_block_range=4, reorg_window=WINDOW)
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
        head = anvil.head()
        lost = await _punch_gap(db_url, [3, 10, 17])
        before = await checkpoint_of(db_url)
        # The chain keeps moving while the replay runs; the indexer keeps ingesting it.
        emitting = asyncio.ensure_future(asyncio.to_thread(emit_blocks, emitter, 8, 2))
        async with JsonRpcClient(anvil.url) as source:
            result = await replay(ingest_settings(db_url, anvil.url, max_block_range=1,
                                                  reorg_window=WINDOW),
                                  source, from_block=0, to_block=head)
        await emitting
        await wait_for_checkpoint(db_url, anvil)
        after = await checkpoint_of(db_url)
    assert before is not None and after is not None and after[0] == before[0] + 8
    assert result.logs_added == lost and result.events_invalidated == 0
    assert result.settled_through is not None and result.settled_through >= 17
    assert result.left_to_indexer == result.settled_through + 1 <= head, \
        "the live window is left to the indexer"
    assert result.checkpoint is None, "a concurrent replay never moves the checkpoint"
    await _assert_exactly_the_chain(db_url, anvil)
    assert not await fetch(db_url, "SELECT 1 FROM reorgs")


async def test_a_reorg_at_the_tip_during_a_replay_of_older_blocks(plain_db_url: str, anvil: Anvil,
                                                                  emitter: Contract) -> None:
    db_url = plain_db_url
    emit_blocks(emitter, 12, 3)
    anvil.mine(1500)  # one block per range: the replay runs for seconds
    emit_blocks(emitter, 6, 5)  # the tip, with logs to orphan
    settings = ingest_settings(db_url, anvil.url, max_block_range=100, reorg_window=WINDOW)
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
        head = anvil.head()
        lost = await _punch_gap(db_url, [2, 9])
        orphaned = {row for row in await stored_logs(db_url) if row[0] > head - 3}
        halfway = asyncio.Event()

        def progress(done: int, _total: int) -> None:
            if done >= 40:
                halfway.set()

        async with JsonRpcClient(anvil.url) as source:
            replaying = asyncio.ensure_future(replay(
                ingest_settings(db_url, anvil.url, max_block_range=1, reorg_window=WINDOW),
                source, from_block=0, to_block=head - 40, progress=progress))
            await asyncio.wait_for(halfway.wait(), 60)
            assert not replaying.done(), "the reorg must happen while the replay runs"
            call = emitter.functions.emitMany(2).build_transaction(
                {"from": emitter.w3.eth.accounts[0], "gas": 500_000})
            tx = {"from": call["from"], "to": call["to"], "data": call["data"], "gas": hex(500_000)}
            anvil.rpc("anvil_reorg", 3, [[tx, 0]])

            async def reorg_recorded() -> bool:
                return bool(await fetch(db_url, "SELECT 1 FROM reorgs"))
            await wait_until(reorg_recorded, what="the live indexer to record the reorg")
            assert not replaying.done(), "the replay was still running when the reorg landed"
            result = await asyncio.wait_for(replaying, 120)
        await wait_for_checkpoint(db_url, anvil)
    assert result.logs_added == lost and result.events_invalidated == 0
    assert result.left_to_indexer is None, "the whole range was settled"
    assert set(await stored_logs(db_url, invalidated=True)) == orphaned
    await _assert_exactly_the_chain(db_url, anvil)
    [reorg] = await fetch(db_url, "SELECT depth, common_ancestor FROM reorgs")
    assert (reorg["depth"], reorg["common_ancestor"]) == (3, head - 3)


async def test_kill_9_of_a_replay_under_a_live_indexer_then_resume(
        plain_db_url: str, anvil: Anvil, emitter: Contract, tmp_path: Path) -> None:
    db_url = plain_db_url
    anvil.mine(150)
    emit_blocks(emitter, 20, 3)  # blocks ~152..171
    anvil.mine(150)
    settings = ingest_settings(db_url, anvil.url, max_block_range=50, reorg_window=WINDOW)
    env = {**os.environ, "DATABASE_URL": db_url, "RPC_URL": anvil.url, "MAX_BLOCK_RANGE": "1",
           "REORG_WINDOW": str(WINDOW), "XDG_STATE_HOME": str(tmp_path), "METRICS_PORT": "0"}
    env.pop("CHAIN_ID", None)
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
        head = anvil.head()
        lost = await _punch_gap(db_url, [155, 160, 166])
        stored_before = len(await stored_logs(db_url))
        args = [sys.executable, "scripts/replay.py", "--chain-id", "31337", "--from-block", "0",
                "--to-block", str(head - 40), "--json"]
        first = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env,
                                                     stdout=asyncio.subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.DEVNULL)

        async def under_way() -> bool:
            return (_saved_position(tmp_path) or -1) >= 25
        await wait_until(under_way, within=60, what="the replay to pass block 25")
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        anvil.mine(5)  # the indexer goes on meanwhile
        await wait_for_checkpoint(db_url, anvil)
        killed_at = _saved_position(tmp_path)
        assert killed_at is not None
        assert killed_at < 150, "killed mid-way, before the gap"
        assert len(await stored_logs(db_url)) == stored_before, "the gap is further on"

        second = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env,
                                                      stdout=asyncio.subprocess.PIPE,
                                                      stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(second.communicate(), 120)
        assert second.returncode == 0, err.decode()
        assert f"resuming: blocks 0..{killed_at} were replayed" in err.decode()
        anvil.mine(2)
        await wait_for_checkpoint(db_url, anvil)
    summary = json.loads(out)
    assert summary["resumed_from"] == killed_at + 1
    assert summary["logs_added"] == lost and summary["left_to_indexer"] is None
    await _assert_exactly_the_chain(db_url, anvil)
    assert _saved_position(tmp_path) is None, "a completed replay forgets its resume state"

"""Bounded memory on dense chains (issue 18): ``python -m ingest``'s peak RSS stays under the
documented bound whatever ``MAX_BLOCK_RANGE`` is, and a reply too large to read is refused
before it is read whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from web3.contract import Contract

from core.errors import RpcRangeTooLarge
from ingest.rpc import JsonRpcClient, RpcReplyTooLarge
from tests.ingest.conftest import (
    IngestProcess,
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
from tests.support.contracts import deploy, web3_for
from tests.support.log_chain import gas_limit_for, mine_log_blocks
from tests.support.rpc_proxy import Fault, RpcProxy

RSS_BOUND_MIB = 256  # docs/ingest.md, "Memory"
DENSE_BLOCKS, LOGS_PER_BLOCK = 40, 5_000


@pytest.fixture
def dense_anvil() -> Iterator[Anvil]:
    node = Anvil(extra_args=["--gas-limit", str(gas_limit_for(1, LOGS_PER_BLOCK))])
    try:
        yield node
    finally:
        node.stop()


def peak_rss_mib(proc: IngestProcess) -> float:
    """The process's peak resident set so far (``VmHWM``), read while it still runs."""
    for line in Path(f"/proc/{proc.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.parametrize("max_block_range", ["2000", "1000000"])
async def test_peak_rss_stays_bounded_on_a_dense_chain_whatever_max_block_range(
        plain_db_url: str, dense_anvil: Anvil, processes: list[IngestProcess],
        max_block_range: str) -> None:
    """40 blocks of 5,000 logs (200,000 logs, the shape of a busy L2 or an airdrop). Before
    ranges followed the log count, the first range was every block up to the head: ~830 MiB."""
    total = mine_log_blocks(dense_anvil, blocks=DENSE_BLOCKS, txs_per_block=1,
                            logs_per_tx=LOGS_PER_BLOCK)
    proc = IngestProcess(plain_db_url, dense_anvil.url, MAX_BLOCK_RANGE=max_block_range)
    processes.append(proc)
    await wait_for_checkpoint(plain_db_url, dense_anvil, within=120)
    peak = peak_rss_mib(proc)
    code, output = proc.terminate()
    assert code == 0, output[-2000:]
    assert peak <= RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB > {RSS_BOUND_MIB} MiB"
    # Written range by range (about 10,000 logs each), not in one transaction at the end.
    assert sum('"ingested"' in line for line in output.splitlines()) >= DENSE_BLOCKS // 2
    [row] = await fetch(plain_db_url, "SELECT count(*) AS n, count(DISTINCT (block_hash, log_index)) "
                                      "AS distinct_logs FROM events")
    assert row["n"] == row["distinct_logs"] == total


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
async def test_a_reply_over_the_bound_is_refused_before_it_is_read(anvil: Anvil,
                                                                   declared: bool) -> None:
    proxy = RpcProxy(anvil.url)
    try:
        anvil.mine(5)
        async with JsonRpcClient(proxy.url, max_response_bytes=1 << 20) as client:
            proxy.fail("eth_getLogs", Fault.huge(2048, declared=declared), times=2)
            started = time.monotonic()
            with pytest.raises(RpcRangeTooLarge, match="RPC_MAX_RESPONSE_MB"):
                await client.logs(0, 4)  # several blocks: the fetcher halves the range
            with pytest.raises(RpcReplyTooLarge, match="exceeds RPC_MAX_RESPONSE_MB"):
                await client.logs(3, 3)  # one block: a bad answer, failed over and retried
            # Reading 2 GiB would take far longer than stopping after the first MiB.
            assert time.monotonic() - started < 10
            assert await client.logs(0, 4) == []  # the same client and connection pool still work
    finally:
        proxy.close()


async def test_python_m_ingest_rides_out_huge_replies_with_a_clear_error(
        db_url: str, anvil: Anvil, processes: list[IngestProcess]) -> None:
    """A hostile endpoint streams 4 GiB for eth_getLogs: the indexer stops reading at
    RPC_MAX_RESPONSE_MB, says so, stays within its memory bound, and stores the chain exactly
    once the endpoint behaves."""
    emitter = deploy(web3_for(anvil.url), "LogEmitter")
    emit_blocks(emitter, 3, 20)
    proxy = RpcProxy(anvil.url)
    try:
        proxy.fail("eth_getLogs", Fault.huge(4096), times=3)
        proc = IngestProcess(db_url, proxy.url, RPC_MAX_RESPONSE_MB="4")
        processes.append(proc)
        await wait_for_checkpoint(db_url, anvil, within=60)
        assert proxy.faults_served["eth_getLogs:huge"] == 3
        peak = peak_rss_mib(proc)
        code, output = proc.terminate()
        assert code == 0
        assert "exceeds RPC_MAX_RESPONSE_MB (4 MiB)" in output
        assert peak <= RSS_BOUND_MIB
        stored = await stored_logs(db_url)
        assert len(stored) == len(set(stored)) and set(stored) == chain_logs(anvil)
    finally:
        proxy.close()


async def test_the_next_range_is_fetched_while_one_is_written_and_no_further(
        db_url: str, anvil: Anvil, emitter: Contract) -> None:
    """Fetching overlaps writing, one range ahead (what keeps memory to two ranges): while the
    first range's transaction is held up in the database, the second range is fetched, the third
    is not, and nothing is committed; released, every range commits in order."""
    emit_blocks(emitter, 12, 30)
    proxy = RpcProxy(anvil.url)
    proxy.limit_log_range(10_000)  # never refuses; records the ranges asked
    blocker = await asyncpg.connect(db_url)
    try:
        blocked = blocker.transaction()
        await blocked.start()
        await blocker.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")  # the range statement waits
        async with running_indexer(ingest_settings(db_url, proxy.url)) as indexer:
            async def second_range_asked() -> bool:
                return len(proxy.log_ranges) >= 2
            await wait_until(second_range_asked, within=30, what="the second range's eth_getLogs")
            await asyncio.sleep(0.5)  # time enough to ask for a third, if it were going to
            assert proxy.log_ranges == [(0, 0), (1, 4)]  # one block, then slow start's 4
            assert await checkpoint_of(db_url) is None
            await blocked.rollback()
            await wait_for_checkpoint(db_url, anvil, within=30)
            assert indexer.metrics.logs._value.get() == 12 * 30
        stored = await stored_logs(db_url)
        assert len(stored) == len(set(stored)) and set(stored) == chain_logs(anvil)
        ids = await fetch(db_url, "SELECT block_number, log_index FROM events ORDER BY id")
        assert [tuple(row) for row in ids] == sorted(tuple(row) for row in ids)  # chain order
    finally:
        await blocker.close()
        proxy.close()

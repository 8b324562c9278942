"""A misbehaving JSON-RPC endpoint (a real HTTP proxy in front of anvil): rate limits with
Retry-After, 5xx, timeouts, provider range limits, garbage and wrong-typed answers, dropped
connections. The stored data must end up equal to the chain's, and the range must adapt."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from web3.contract import Contract

from ingest.rpc import JsonRpcClient
from tests.ingest.conftest import (
    chain_logs,
    emit_blocks,
    ingest_settings,
    running_indexer,
    stored_logs,
    wait_for_checkpoint,
)
from tests.support.anvil import Anvil
from tests.support.rpc_proxy import Fault, RpcProxy


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[RpcProxy]:
    server = RpcProxy(anvil.url)
    yield server
    server.close()


async def test_faults_are_ridden_out_and_the_range_adapts(db_url: str, anvil: Anvil,
                                                          emitter: Contract, proxy: RpcProxy) -> None:
    emit_blocks(emitter, 30, 4)
    proxy.limit_log_range(3)  # "query returned more than 10000 results … [from, from+2]"
    proxy.fail("eth_chainId", Fault.http(503))
    proxy.fail("eth_blockNumber", Fault.http(429, retry_after=0.3), times=2)
    proxy.fail("eth_getLogs", Fault.http(500), times=1, after=2)
    proxy.fail("eth_getLogs", Fault.garbage(), times=1, after=4)
    proxy.fail("eth_getLogs", Fault.wrong_type(), times=1, after=5)
    proxy.fail("eth_getLogs", Fault.timeout(3.0), times=1, after=7)
    proxy.fail("eth_getBlockByNumber", Fault.wrong_type(), times=1, after=1)
    proxy.fail("eth_getBlockByNumber", Fault.disconnect(), times=1, after=3)
    proxy.fail("eth_getBlockByNumber", Fault.rpc_error("internal error", code=-32603), after=5)
    settings = ingest_settings(db_url, proxy.url, max_block_range=20, rpc_timeout=1.0)
    started = time.monotonic()
    async with running_indexer(settings) as indexer:
        await wait_for_checkpoint(db_url, anvil, within=60)
    stored = await stored_logs(db_url)
    assert len(stored) == len(set(stored))
    assert set(stored) == chain_logs(anvil)
    assert time.monotonic() - started >= 0.3  # Retry-After was honoured
    # Slow start: one block, then four, which the provider refused; its suggested 3 were used
    # next, and every later try above 3 (cautious growth) fell back.
    sizes = [last - first + 1 for first, last in proxy.log_ranges]
    assert sizes[:3] == [1, 4, 3]
    assert all(sizes[i + 1] <= 3 for i in range(len(sizes) - 1) if sizes[i] > 3)
    assert proxy.faults_served["eth_getLogs:delay"] == 1
    assert indexer.sizer.size <= 4  # at most one cautious step above what the provider takes
    errors = {kind: indexer.metrics.rpc_errors.labels(kind=kind)._value.get()
              for kind in ("rate_limited", "unavailable", "range_too_large", "bad_response", "timeout")}
    assert all(count >= 1 for count in errors.values()), errors


async def test_a_single_block_that_still_fails_is_fetched_by_hash(
        plain_db_url: str, anvil: Anvil, emitter: Contract, proxy: RpcProxy) -> None:
    emit_blocks(emitter, 3, 5)
    proxy.limit_log_range(0)  # every ranged eth_getLogs is refused, even a single block
    async with running_indexer(ingest_settings(plain_db_url, proxy.url, max_block_range=4)):
        await wait_for_checkpoint(plain_db_url, anvil)
    assert set(await stored_logs(plain_db_url)) == chain_logs(anvil)
    assert proxy.calls["eth_getLogs"] > len(proxy.log_ranges)  # blockHash queries were made


async def test_the_adapter_classifies_what_the_proxy_serves(anvil: Anvil, proxy: RpcProxy) -> None:
    from core.errors import RpcBadResponse, RpcRangeTooLarge, RpcUnavailable
    from ingest.rpc import RpcTimeout

    async with JsonRpcClient(proxy.url, timeout=0.5) as client:
        proxy.fail("eth_blockNumber", Fault.http(429, retry_after=7))
        with pytest.raises(RpcUnavailable) as limited:
            await client.head()
        assert limited.value.retry_after == 7
        proxy.fail("eth_blockNumber", Fault.timeout(2))
        with pytest.raises(RpcTimeout):
            await client.head()
        proxy.fail("eth_blockNumber", Fault.garbage())
        with pytest.raises(RpcBadResponse):
            await client.head()
        proxy.fail("eth_blockNumber", Fault.wrong_type())
        with pytest.raises(RpcBadResponse):
            await client.head()
        proxy.limit_log_range(2)
        with pytest.raises(RpcRangeTooLarge) as too_large:
            await client.logs(0, 9)
        assert too_large.value.suggested == (0, 1)
        proxy.fail("eth_getLogs", Fault.http(413))
        with pytest.raises(RpcRangeTooLarge):
            await client.logs(0, 1)
        assert await client.head() == anvil.head()

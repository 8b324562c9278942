"""Provider truth (issue 14): behind a load-balanced endpoint whose second backend lags 1–3 blocks
(``null`` blocks, ``eth_getLogs`` clamped to its head, "unknown block" by hash; routed per request
and per batch call), the indexer stores exactly the chain's logs and records no reorg."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from web3 import Web3
from web3.contract import Contract

from tests.ingest.conftest import (
    chain_logs,
    fetch,
    ingest_settings,
    running_indexer,
    stored_logs,
    wait_for_checkpoint,
)
from tests.support.anvil import Anvil
from tests.support.contracts import deploy_erc20, transact
from tests.support.lagging_provider import LaggingProvider


@pytest.fixture
def provider(anvil: Anvil) -> Iterator[LaggingProvider]:
    server = LaggingProvider(anvil.url, seed=14)
    yield server
    server.close()


class GrowingChain:
    """A chain that grows by one block every ``every`` seconds in a background thread, every
    block carrying a few logs (LogEmitter), until ``stop()``."""

    def __init__(self, emitter: Contract, *, every: float = 0.3, logs: int = 3) -> None:
        self.emitter, self.every, self.logs = emitter, every, logs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.blocks = 0

    def __enter__(self) -> GrowingChain:
        self._thread.start()
        return self

    def _run(self) -> None:
        w3 = self.emitter.w3
        while not self._stop.wait(self.every):
            tx = self.emitter.functions.emitMany(self.logs).transact()
            w3.eth.wait_for_transaction_receipt(tx)
            self.blocks += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


async def _no_reorgs(db_url: str) -> None:
    assert not await fetch(db_url, "SELECT * FROM reorgs")
    assert not await stored_logs(db_url, invalidated=True)


@pytest.mark.parametrize("filtered", [False, True], ids=["all-logs", "INGEST_ADDRESSES"])
async def test_lagging_load_balanced_provider_loses_nothing_and_invents_no_reorg(
        plain_db_url: str, anvil: Anvil, w3: Web3, emitter: Contract, provider: LaggingProvider,
        filtered: bool) -> None:
    """Without a filter the bloom of each block's logs must equal its header's; with
    INGEST_ADDRESSES, blocks whose bloom admits the address but came back empty are confirmed by
    eth_getLogs by blockHash (which the lagging view answers with "unknown block")."""
    other = deploy_erc20(w3)  # logs the filter leaves out, in blocks of their own
    transact(w3, other.functions.mint(w3.eth.accounts[1], 5))
    settings = ingest_settings(plain_db_url, provider.url, poll_interval=0.05,
                               ingest_addresses=emitter.address if filtered else "")
    async with running_indexer(settings) as indexer:
        with GrowingChain(emitter):
            await asyncio.sleep(6)
        await wait_for_checkpoint(plain_db_url, anvil, within=30)
    stored = await stored_logs(plain_db_url)
    expected = chain_logs(anvil)
    if filtered:
        expected = {row for row in expected if row[5] == emitter.address.lower()}
    assert len(stored) == len(set(stored))
    assert set(stored) == expected
    await _no_reorgs(plain_db_url)
    # The provider really withheld data, and the indexer noticed (and refetched).
    assert provider.stats["null_blocks"] > 0 and provider.stats["clamped_log_ranges"] > 0
    assert indexer.metrics.rpc_errors.labels(kind="incomplete")._value.get() > 0
    if filtered:
        assert provider.stats["unknown_block"] > 0

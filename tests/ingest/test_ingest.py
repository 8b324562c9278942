"""Logs land exactly once with the right fields, on both storage backends (guarantee 1)."""

from __future__ import annotations

from datetime import UTC, datetime

from web3 import Web3
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
from tests.support.contracts import deploy_erc20, transact


async def test_erc20_logs_land_exactly_once_with_correct_fields(db_url: str, anvil: Anvil,
                                                                w3: Web3) -> None:
    token = deploy_erc20(w3)
    owner, alice, bob = w3.eth.accounts[:3]
    transact(w3, token.functions.mint(alice, 10**21))
    transact(w3, token.functions.transfer(bob, 0))
    transact(w3, token.functions.transfer(alice, 0), **{"from": bob})
    transact(w3, token.functions.approve(bob, 5 * 10**18), **{"from": alice})
    transact(w3, token.functions.transferFrom(alice, owner, 10**18), **{"from": bob})

    async with running_indexer(ingest_settings(db_url, anvil.url, max_block_range=2)):
        await wait_for_checkpoint(db_url, anvil)

    expected = chain_logs(anvil)
    stored = await stored_logs(db_url)
    assert len(stored) == len(set(stored)), "duplicates stored"
    assert set(stored) == expected
    assert {row[5] for row in stored} == {token.address.lower()}
    assert all(value == value.lower() for row in stored for value in row if isinstance(value, str))
    # block_time is the header timestamp; blocks rows hold the canonical headers.
    rows = await fetch(db_url, "SELECT DISTINCT block_number, block_hash, block_time FROM events")
    for row in rows:
        header = anvil.rpc("eth_getBlockByNumber", hex(row["block_number"]), False)
        assert row["block_hash"] == header["hash"]
        assert row["block_time"] == datetime.fromtimestamp(int(header["timestamp"], 16), UTC)
    blocks = await fetch(db_url, "SELECT number, hash FROM blocks WHERE chain_id = 31337 ORDER BY number")
    assert [(b["number"], b["hash"]) for b in blocks][-1] == (
        anvil.head(), anvil.rpc("eth_getBlockByNumber", "latest", False)["hash"])


async def test_absent_topics_are_null_and_data_is_kept(db_url: str, anvil: Anvil,
                                                       emitter: Contract) -> None:
    emitter.w3.eth.wait_for_transaction_receipt(
        emitter.functions.emitVariety(b"\xde\xad\xbe\xef" * 20).transact())
    async with running_indexer(ingest_settings(db_url, anvil.url)):
        await wait_for_checkpoint(db_url, anvil)
    rows = await fetch(db_url, "SELECT topic0, topic1, topic2, topic3, data FROM events ORDER BY log_index")
    shapes = [sum(t is not None for t in (r["topic0"], r["topic1"], r["topic2"], r["topic3"]))
              for r in rows]
    assert shapes == [0, 1, 4]
    assert "deadbeef" * 20 in rows[2]["data"]
    assert set(await stored_logs(db_url)) == chain_logs(anvil)


async def test_restart_resumes_from_the_checkpoint_without_gap_or_duplicate(
        db_url: str, anvil: Anvil, emitter: Contract) -> None:
    emit_blocks(emitter, 6, 40)
    settings = ingest_settings(db_url, anvil.url, max_block_range=3)
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
    emit_blocks(emitter, 7, 25)
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
    stored = await stored_logs(db_url)
    assert len(stored) == len(set(stored)) == 6 * 40 + 7 * 25
    assert set(stored) == chain_logs(anvil)
    batches = await fetch(db_url, "SELECT sum(row_count) AS n FROM event_batches")
    assert batches[0]["n"] == len(stored)  # the second run re-inserted nothing


async def test_start_block_defaults_to_the_head_and_confirmations_hold_back(
        db_url: str, anvil: Anvil, emitter: Contract) -> None:
    emit_blocks(emitter, 3, 5)
    head = anvil.head()
    settings = ingest_settings(db_url, anvil.url, start_block=None, confirmations=2)
    async with running_indexer(settings) as indexer:
        async def at_target() -> bool:
            return await checkpoint_of(db_url) is not None and \
                indexer.checkpoint is not None and indexer.checkpoint.number == anvil.head() - 2

        await wait_until(at_target, what="the first range at head - confirmations")
        assert (await checkpoint_of(db_url) or (0,))[0] == head - 2
        emit_blocks(emitter, 4, 5)
        await wait_until(at_target, what="checkpoint = head - confirmations")
    stored = await stored_logs(db_url)
    assert {row[0] for row in stored} == set(range(head - 2, anvil.head() - 1))
    assert set(stored) == chain_logs(anvil, head - 2, anvil.head() - 2)


async def test_ingest_addresses_restricts_to_listed_contracts(db_url: str, anvil: Anvil,
                                                              w3: Web3, emitter: Contract) -> None:
    token = deploy_erc20(w3)
    transact(w3, token.functions.mint(w3.eth.accounts[1], 5))
    emit_blocks(emitter, 2, 3)
    settings = ingest_settings(db_url, anvil.url, ingest_addresses=token.address)
    async with running_indexer(settings):
        await wait_for_checkpoint(db_url, anvil)
    stored = await stored_logs(db_url)
    assert stored and {row[5] for row in stored} == {token.address.lower()}
    assert set(stored) == {row for row in chain_logs(anvil) if row[5] == token.address.lower()}


async def test_stop_during_a_catch_up_write_commits_it_and_returns(
        plain_db_url: str, anvil: Anvil, emitter: Contract) -> None:
    import asyncio

    from ingest.poller import Indexer
    from ingest.rpc import JsonRpcClient

    emit_blocks(emitter, 8, 3)
    stop = asyncio.Event()

    class StopAfterFirstWrite(Indexer):
        async def _write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            await super()._write(*args, **kwargs)
            stop.set()  # like SIGTERM arriving while the transaction commits

    # The first range is one block (slow start): block 2, the first with logs.
    settings = ingest_settings(plain_db_url, anvil.url, max_block_range=2, start_block=2)
    async with JsonRpcClient(anvil.url) as source:
        indexer = StopAfterFirstWrite(settings, source)
        await asyncio.wait_for(indexer.run(stop), 10)
    assert await checkpoint_of(plain_db_url) == (2, anvil.rpc("eth_getBlockByNumber", "0x2", False)["hash"])
    stored = set(await stored_logs(plain_db_url))
    assert len(stored) == 3 and stored == chain_logs(anvil, 0, 2)

"""The backtest's node source (``ingest.trigger_logs``) asks ``eth_getLogs`` by address and
``topic0``, and its completeness proof is right for that filter: a node that drops every log of
a range answer is caught by the by-``blockHash`` confirmations of exactly the blocks whose bloom
admits the address and ``topic0`` — not of blocks holding only the contract's other events."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.abi import parse_event_signature
from ingest.completeness import check_range
from ingest.rpc import Header, JsonRpcClient, Log
from ingest.trigger_logs import trigger_logs
from tests.support.anvil import Anvil
from tests.support.contracts import deploy_erc20, transact, web3_for
from tests.support.http_server import BackgroundHttpServer

TRANSFER = parse_event_signature(
    "Transfer(address indexed from, address indexed to, uint256 value)").topic0


class DroppingProvider(BackgroundHttpServer):
    """Anvil behind a node that answers every ``eth_getLogs`` by block range with ``[]`` (a
    backend that lost its logs) and answers by ``blockHash`` truthfully; keeps every query."""

    thread_name = "dropping-provider"

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.range_queries: list[dict[str, Any]] = []
        self.hash_queries: list[dict[str, Any]] = []
        super().__init__()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = orjson.loads(await request.read())
        calls = payload if isinstance(payload, list) else [payload]
        replies = [await self._answer(call) for call in calls]
        body = replies if isinstance(payload, list) else replies[0]
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _answer(self, call: dict[str, Any]) -> Any:
        if call["method"] == "eth_getLogs":
            query = call["params"][0]
            if "blockHash" in query:
                self.hash_queries.append(query)
            else:
                self.range_queries.append(query)
                return {"jsonrpc": "2.0", "id": call["id"], "result": []}
        async with self.session.post(self.upstream, data=orjson.dumps(call),
                                     headers={"content-type": "application/json"}) as response:
            return orjson.loads(await response.read())


async def test_logs_by_address_and_topic0_are_proven_against_a_node_that_drops_them(
        anvil: Anvil) -> None:
    w3 = web3_for(anvil.url)
    token = deploy_erc20(w3)
    mint_blocks = []
    for amount in (5, 6, 7):
        mint_blocks.append(transact(w3, token.functions.mint(w3.eth.accounts[1], amount))
                           ["blockNumber"])
    # A block with only the token's Approval: its bloom admits the address, not Transfer.
    approval_block = transact(w3, token.functions.approve(w3.eth.accounts[2], 1))["blockNumber"]
    address = token.address.lower()
    provider = DroppingProvider(anvil.url)
    try:
        async with JsonRpcClient(provider.url) as source:
            found = [entry async for _, page in trigger_logs(
                source, chain_id=31337, first=0, last=anvil.head(), addresses=[address],
                topic0=TRANSFER, max_block_range=100) for entry in page]
    finally:
        provider.close()
    assert [entry["block_number"] for entry in found] == mint_blocks
    assert all(entry["topic0"] == TRANSFER and entry["address"] == address for entry in found)
    assert provider.range_queries and all(
        query["topics"] == [TRANSFER] and query["address"] == [address]
        for query in provider.range_queries)
    confirmed = {w3.eth.get_block(query["blockHash"])["number"]
                 for query in provider.hash_queries}
    assert confirmed == set(mint_blocks), "exactly the blocks admitting address and topic0"
    assert approval_block not in confirmed
    assert all(query["topics"] == [TRANSFER] for query in provider.hash_queries)


def test_a_topic0_filter_alone_confirms_the_blocks_admitting_it() -> None:
    """Any contract's ``topic0`` (a factory family past the address-list limit): a block whose
    bloom admits it but returned nothing is confirmed; one whose bloom lacks it is not."""
    from ingest.bloom import item_bits

    other = "0x" + "ab" * 32
    blooms = [item_bits(TRANSFER) | item_bits("0x" + "11" * 20), item_bits(other), 0]
    headers: list[Header | None] = []
    parent = "0x" + "00" * 32
    for number, bloom in enumerate(blooms, start=10):
        block_hash = "0x" + f"{number:064x}"
        headers.append(Header(number=number, hash=block_hash, parent_hash=parent,
                              timestamp=0, logs_bloom=bloom))
        parent = block_hash
    logs: list[Log] = []
    check = check_range(10, headers, logs, (), TRANSFER)
    assert [h.number for h in check.to_confirm] == [10] and len(check.headers) == 3
    # With the address too: both must be admitted.
    check = check_range(10, headers, logs, ["0x" + "22" * 20], TRANSFER)
    assert check.to_confirm == []
    check = check_range(10, headers, logs, ["0x" + "11" * 20], TRANSFER)
    assert [h.number for h in check.to_confirm] == [10]
    # Unfiltered, the same headers with no logs are refused (blooms must match exactly).
    assert check_range(10, headers, logs).problem is not None

"""A chain driver for end-to-end tests: real OpenZeppelin and Uniswap V2 contracts on anvil, event
streams produced by real transactions, and the chain's own view of what happened (the oracle the
tests compare blockhook against, decoded by web3 — never by blockhook's decoder).

Transactions go out as raw ``eth_sendTransaction`` calls (anvil signs for its dev accounts), which
keeps a stream of hundreds of events to a few seconds; ``block()`` groups several transactions into
one block so streams mix one-log and many-log blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract

from tests.support.anvil import Anvil
from tests.support.contracts import artifact, deploy, deploy_erc20, web3_for

TOKEN = 10**18

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
SWAP = ("Swap(address indexed sender, uint256 amount0In, uint256 amount1In, uint256 amount0Out, "
        "uint256 amount1Out, address indexed to)")
SYNC = "Sync(uint112 reserve0, uint112 reserve1)"


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value).lower()
    return text if text.startswith("0x") else "0x" + text


@dataclass(frozen=True)
class ChainLog:
    """One log as the node reports it, decoded by web3 with the emitting contract's ABI."""

    block_number: int
    block_hash: str
    block_time: datetime
    tx_hash: str
    tx_index: int
    log_index: int
    address: str
    topics: tuple[str, ...]
    data: str
    name: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        """What identifies a log across blockhook and the chain: (block hash, log index)."""
        return (self.block_hash, self.log_index)

    def json_args(self) -> dict[str, Any]:
        """The webhook form of ``args`` (docs/reference.md): integers as decimal strings, addresses lowercase."""
        return {name: (str(value) if isinstance(value, int) and not isinstance(value, bool)
                       else _hex(value) if isinstance(value, bytes | bytearray)
                       else value.lower() if isinstance(value, str) else value)
                for name, value in self.args.items()}


class Chain:
    """Deploys the contracts and drives transactions on one anvil devnet."""

    def __init__(self, node: Anvil) -> None:
        self.node = node
        self.w3: Web3 = web3_for(node.url)
        self.accounts: list[str] = list(self.w3.eth.accounts)
        self.deployer = self.accounts[0]
        self._http = httpx.Client(timeout=30)
        self._lock = threading.Lock()
        self._abi_by_address: dict[str, Contract] = {}
        self.token_a: Contract
        self.token_b: Contract
        self.factory: Contract
        self.pair: Contract
        self.reserves = (0, 0)

    # ----------------------------------------------------------------- deployment

    def deploy(self) -> Chain:
        """Two OpenZeppelin ERC20PresetMinterPauser tokens, a Uniswap V2 factory and their pair."""
        self.token_a = deploy_erc20(self.w3, "Token A", "TKA")
        self.token_b = deploy_erc20(self.w3, "Token B", "TKB")
        self.factory = deploy(self.w3, "UniswapV2Factory", self.deployer)
        self.wait(self.send(self.factory, "createPair", self.token_a.address,
                            self.token_b.address, gas=6_000_000))
        pair_address = self.factory.functions.getPair(self.token_a.address, self.token_b.address).call()
        self.pair = self.w3.eth.contract(address=pair_address, abi=artifact("UniswapV2Pair")["abi"])
        for contract in (self.token_a, self.token_b, self.pair):
            self._abi_by_address[contract.address.lower()] = contract
        return self

    @property
    def token0(self) -> Contract:
        """The pair's token0 (Uniswap sorts the two tokens by address)."""
        return self.token_a if self.token_a.address.lower() < self.token_b.address.lower() else self.token_b

    @property
    def token1(self) -> Contract:
        return self.token_b if self.token0 is self.token_a else self.token_a

    # ----------------------------------------------------------------- transactions

    def rpc(self, method: str, *params: Any) -> Any:
        reply = self._http.post(self.node.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                     "params": list(params)}).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def send(self, contract: Contract, function: str, *args: Any, sender: str | None = None,
             gas: int = 500_000) -> str:
        """Send one transaction calling ``contract.function(*args)``; return its hash. Gas is
        explicit: inside ``block()`` a call may depend on an earlier transaction of the same
        unmined block, which anvil's estimate (against the latest block) would see revert."""
        data = contract.encode_abi(function, args=list(args))
        return str(self.rpc("eth_sendTransaction", {"from": sender or self.deployer,
                                                    "to": contract.address, "data": data,
                                                    "gas": hex(gas)}))

    def wait(self, tx_hash: str) -> dict[str, Any]:
        receipt = self.w3.eth.wait_for_transaction_receipt(HexBytes(tx_hash), timeout=30)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash} reverted")
        return dict(receipt)

    @contextmanager
    def block(self) -> Iterator[None]:
        """Every transaction sent inside goes into one block, mined on exit."""
        with self._lock:
            self.rpc("evm_setAutomine", False)
            try:
                yield
                self.rpc("evm_mine")
            finally:
                self.rpc("evm_setAutomine", True)

    def mint(self, token: Contract, to: str, amount: int) -> str:
        """An ERC20 mint: one Transfer from the zero address."""
        return self.send(token, "mint", to, amount)

    def transfer(self, token: Contract, to: str, amount: int, *, sender: str | None = None) -> str:
        return self.send(token, "transfer", to, amount, sender=sender)

    def add_liquidity(self, amount_a: int, amount_b: int) -> None:
        """Mint both tokens to the deployer, transfer them to the pair, then ``pair.mint``:
        Transfer ×2 (mint) + Transfer ×2 (to the pair) + LP Transfer(s), Sync, Mint."""
        with self.block():
            self.mint(self.token_a, self.deployer, amount_a)
            self.mint(self.token_b, self.deployer, amount_b)
            self.transfer(self.token_a, self.pair.address, amount_a)
            self.transfer(self.token_b, self.pair.address, amount_b)
            self.send(self.pair, "mint", self.deployer)
        reserve0, reserve1, _ = self.pair.functions.getReserves().call()
        self.reserves = (reserve0, reserve1)

    def swap(self, amount_in: int, *, zero_for_one: bool) -> None:
        """Transfer ``amount_in`` of one token into the pair, then ``pair.swap`` for the other
        (Uniswap's 0.3 % fee formula): Transfer in, then Transfer out, Sync, Swap."""
        reserve0, reserve1 = self.reserves
        reserve_in, reserve_out = (reserve0, reserve1) if zero_for_one else (reserve1, reserve0)
        amount_out = amount_in * 997 * reserve_out // (reserve_in * 1000 + amount_in * 997)
        token_in = self.token0 if zero_for_one else self.token1
        with self.block():
            self.mint(token_in, self.deployer, amount_in)
            self.transfer(token_in, self.pair.address, amount_in)
            outs = (0, amount_out) if zero_for_one else (amount_out, 0)
            self.send(self.pair, "swap", *outs, self.deployer, b"")
        if zero_for_one:
            self.reserves = (reserve0 + amount_in, reserve1 - amount_out)
        else:
            self.reserves = (reserve0 - amount_out, reserve1 + amount_in)

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", hex(blocks))

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def reorg(self, depth: int,
              replacement_txs: Sequence[tuple[dict[str, Any], int]] = ()) -> None:
        """``anvil_reorg``: replace the last ``depth`` blocks; ``replacement_txs`` are
        ``(tx, block offset)`` pairs mined into the new blocks."""
        self.rpc("anvil_reorg", depth, [[tx, offset] for tx, offset in replacement_txs])

    def call_tx(self, contract: Contract, function: str, *args: Any) -> dict[str, Any]:
        """An unsigned transaction object (for ``reorg`` replacement transactions)."""
        return {"from": self.deployer, "to": contract.address,
                "data": contract.encode_abi(function, args=list(args)), "gas": hex(500_000)}

    # ----------------------------------------------------------------- the oracle

    def logs(self, from_block: int = 0, to_block: int | None = None) -> list[ChainLog]:
        """Every log of the canonical chain in the range, decoded with web3 where the emitting
        contract is one of ours."""
        last = self.head() if to_block is None else to_block
        raw = self.rpc("eth_getLogs", {"fromBlock": hex(from_block), "toBlock": hex(last)})
        times: dict[str, datetime] = {}
        result = []
        for entry in raw:
            block_hash = entry["blockHash"].lower()
            if block_hash not in times:
                header = self.rpc("eth_getBlockByHash", entry["blockHash"], False)
                times[block_hash] = datetime.fromtimestamp(int(header["timestamp"], 16), UTC)
            name, args = self._decode(entry)
            result.append(ChainLog(
                block_number=int(entry["blockNumber"], 16), block_hash=block_hash,
                block_time=times[block_hash], tx_hash=entry["transactionHash"].lower(),
                tx_index=int(entry["transactionIndex"], 16), log_index=int(entry["logIndex"], 16),
                address=entry["address"].lower(), topics=tuple(t.lower() for t in entry["topics"]),
                data=entry["data"].lower(), name=name, args=args))
        return result

    def _decode(self, entry: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        contract = self._abi_by_address.get(entry["address"].lower())
        if contract is None or not entry["topics"]:
            return None, {}
        log = {"address": Web3.to_checksum_address(entry["address"]),
               "topics": [HexBytes(t) for t in entry["topics"]], "data": HexBytes(entry["data"]),
               "blockNumber": int(entry["blockNumber"], 16), "blockHash": HexBytes(entry["blockHash"]),
               "transactionHash": HexBytes(entry["transactionHash"]),
               "transactionIndex": int(entry["transactionIndex"], 16),
               "logIndex": int(entry["logIndex"], 16)}
        for element in contract.abi:
            event_abi: dict[str, Any] = dict(element)
            if event_abi.get("type") != "event":
                continue
            event = contract.events[event_abi["name"]]()
            if _hex(event.topic) != entry["topics"][0].lower():
                continue
            decoded = event.process_log(log)  # type: ignore[arg-type]
            return str(decoded["event"]), dict(decoded["args"])
        return None, {}

    def close(self) -> None:
        self._http.close()

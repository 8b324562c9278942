"""A Uniswap V2 family on anvil from the real npm artifacts (``@uniswap/v2-core``): one factory,
pairs of fresh OpenZeppelin tokens, liquidity and swaps — a pair may be created and swapped on in
one block (its address is known before it exists: CREATE2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.contract import Contract

from tests.support.contracts import artifact, deploy, deploy_erc20, web3_for

PAIR_CREATED = ("PairCreated(address indexed token0, address indexed token1, address pair, "
                "uint256 index)")
SWAP = ("Swap(address indexed sender, uint256 amount0In, uint256 amount1In, "
        "uint256 amount0Out, uint256 amount1Out, address indexed to)")
ETH = 10**18


class UniswapV2:
    """Drives one factory on one anvil node (transactions from the first account)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.w3: Web3 = web3_for(url)
        self.deployer = self.w3.eth.accounts[0]
        self._http = httpx.Client(timeout=30)
        self.factory = deploy(self.w3, "UniswapV2Factory", self.deployer)
        self._pair_abi = artifact("UniswapV2Pair")["abi"]
        self._init_code_hash = keccak(hexstr=artifact("UniswapV2Pair")["bytecode"])
        self._tokens = 0

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------- plumbing

    def rpc(self, method: str, *params: Any) -> Any:
        reply = self._http.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                "params": list(params)}).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def send(self, contract: Contract, function: str, *args: Any, gas: int = 500_000) -> str:
        """One transaction; gas is explicit so calls inside ``block()`` may depend on earlier
        transactions of the same unmined block."""
        data = contract.encode_abi(function, args=list(args))
        return str(self.rpc("eth_sendTransaction", {"from": self.deployer, "to": contract.address,
                                                    "data": data, "gas": hex(gas)}))

    @contextmanager
    def block(self) -> Iterator[None]:
        """Every transaction sent inside goes into one block, mined on exit."""
        self.rpc("evm_setAutomine", False)
        try:
            yield
            self.rpc("evm_mine")
        finally:
            self.rpc("evm_setAutomine", True)

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    # ----------------------------------------------------------------- the family

    def tokens(self) -> tuple[Contract, Contract]:
        """Two fresh tokens, sorted as the pair sorts them (token0 first)."""
        self._tokens += 2
        first = deploy_erc20(self.w3, f"Token {self._tokens - 1}", f"T{self._tokens - 1}")
        second = deploy_erc20(self.w3, f"Token {self._tokens}", f"T{self._tokens}")
        return tuple(sorted((first, second), key=lambda c: c.address.lower()))  # type: ignore[return-value]

    def pair_address(self, token0: Contract, token1: Contract) -> str:
        """The CREATE2 address ``createPair`` gives the pair (lowercase)."""
        salt = keccak(bytes.fromhex(token0.address[2:]) + bytes.fromhex(token1.address[2:]))
        raw = keccak(b"\xff" + bytes.fromhex(self.factory.address[2:]) + salt +
                     self._init_code_hash)[12:]
        return "0x" + raw.hex()

    def pair(self, address: str) -> Contract:
        return self.w3.eth.contract(address=to_checksum_address(address), abi=self._pair_abi)

    def create_pair(self, token0: Contract, token1: Contract) -> str:
        """Send ``createPair`` (mined now, or with the enclosing ``block()``); return the pair."""
        self.send(self.factory, "createPair", token0.address, token1.address, gas=6_000_000)
        return self.pair_address(token0, token1)

    def add_liquidity(self, token0: Contract, token1: Contract, amount0: int, amount1: int) -> None:
        pair = self.pair(self.pair_address(token0, token1))
        for token, amount in ((token0, amount0), (token1, amount1)):
            self.send(token, "mint", self.deployer, amount)
            self.send(token, "transfer", pair.address, amount)
        self.send(pair, "mint", self.deployer)

    def swap(self, token0: Contract, token1: Contract, amount0_in: int,
             reserves: tuple[int, int] | None = None) -> None:
        """Swap ``amount0_in`` of token0 for token1 at ``reserves`` (default: the pair's, as
        mined; 0.3 % fee formula)."""
        pair = self.pair(self.pair_address(token0, token1))
        if reserves is None:
            reserve0, reserve1, _ = pair.functions.getReserves().call()
        else:
            reserve0, reserve1 = reserves
        out = amount0_in * 997 * reserve1 // (reserve0 * 1000 + amount0_in * 997)
        self.send(token0, "mint", self.deployer, amount0_in)
        self.send(token0, "transfer", pair.address, amount0_in)
        self.send(pair, "swap", 0, out, self.deployer, b"")

    def create_and_swap(self, amount0_in: int, *, liquidity: int = 1_000 * ETH) -> str:
        """A new pair created, funded and swapped on in one block; return the pair."""
        token0, token1 = self.tokens()
        with self.block():
            pair = self.create_pair(token0, token1)
            self.add_liquidity(token0, token1, liquidity, liquidity)
            self.swap(token0, token1, amount0_in, (liquidity, liquidity))
        return pair

"""The demo's on-chain part: deploy OpenZeppelin's ERC20PresetMinterPauser (the real npm
artifact) on the devnet, mint, and send transfers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract

from scripts.demo import plan

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = (ROOT / "node_modules" / "@openzeppelin" / "contracts" / "build" / "contracts"
            / "ERC20PresetMinterPauser.json")


def connect(rpc_url: str) -> Web3:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    w3.eth.default_account = to_checksum_address(plan.DEPLOYER)
    return w3


def _wait(w3: Web3, tx_hash: Any) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.1)
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction {tx_hash.hex()} reverted")
    return receipt


def deploy_token(w3: Web3) -> Contract:
    """Deploy the token as the deployer's first transaction; raise if it did not land at
    :func:`plan.token_address` (the devnet was not fresh, so the seeded trigger would miss it)."""
    if not ARTIFACT.is_file():
        raise RuntimeError(f"{ARTIFACT} missing: run `make install` (npm @openzeppelin/contracts)")
    spec = json.loads(ARTIFACT.read_text())
    factory = w3.eth.contract(abi=spec["abi"], bytecode=spec["bytecode"])
    receipt = _wait(w3, factory.constructor(plan.TOKEN_NAME, plan.TOKEN_SYMBOL).transact())
    address = receipt["contractAddress"]
    if address != plan.token_address():
        raise RuntimeError(f"token deployed at {address}, expected {plan.token_address()}: "
                           "the devnet is not fresh")
    return w3.eth.contract(address=address, abi=spec["abi"])


def mint(w3: Web3, token: Contract, tokens: int) -> str:
    receipt = _wait(w3, token.functions.mint(plan.DEPLOYER, plan.token_units(tokens)).transact())
    return str(receipt["transactionHash"].to_0x_hex())


def transfer(w3: Web3, token: Contract, to: str, tokens: int) -> str:
    receipt = _wait(w3, token.functions.transfer(to, plan.token_units(tokens)).transact())
    return str(receipt["transactionHash"].to_0x_hex())

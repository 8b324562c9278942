"""Real third-party contracts (OpenZeppelin 4.9.6 presets, Uniswap V2) deployed on anvil."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

ROOT = Path(__file__).resolve().parents[2]
OPENZEPPELIN = ROOT / "node_modules" / "@openzeppelin" / "contracts" / "build" / "contracts"
UNISWAP = ROOT / "node_modules" / "@uniswap" / "v2-core" / "build"
FIXTURES = ROOT / "tests" / "fixtures"


@cache
def artifact(name: str) -> dict[str, Any]:
    """ABI and bytecode of a contract artifact shipped by npm (or our own fixture)."""
    for folder in (OPENZEPPELIN, UNISWAP, FIXTURES):
        path = folder / f"{name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            bytecode = data.get("bytecode") or data.get("evm", {}).get("bytecode", {}).get("object")
            if isinstance(bytecode, dict):
                bytecode = bytecode.get("object")
            return {"abi": data["abi"], "bytecode": bytecode}
    raise FileNotFoundError(f"artifact {name} not found; run `make install`")


def web3_for(url: str) -> Web3:
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    w3.eth.default_account = w3.eth.accounts[0]
    return w3


def deploy(w3: Web3, name: str, *args: Any) -> Contract:
    spec = artifact(name)
    factory = w3.eth.contract(abi=spec["abi"], bytecode=spec["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact())
    return w3.eth.contract(address=receipt["contractAddress"], abi=spec["abi"])


def deploy_erc20(w3: Web3, name: str = "Token", symbol: str = "TKN") -> Contract:
    """An OpenZeppelin ERC20PresetMinterPauser; the default account may mint."""
    return deploy(w3, "ERC20PresetMinterPauser", name, symbol)


def transact(w3: Web3, call: Any, **tx: Any) -> Any:
    return w3.eth.wait_for_transaction_receipt(call.transact(tx or None))

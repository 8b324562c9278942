"""Chains of many logs on anvil, for the dense-chain tests and ``scripts/bench.py ingest``.

``mine_log_blocks(node, blocks=40, txs_per_block=1, logs_per_tx=5_000)`` deploys the
``LogEmitter`` fixture and mines ``blocks`` blocks of ``txs_per_block`` × ``logs_per_tx`` ``Dense``
logs (three topics, one word of data: the shape of an ERC-20 ``Transfer``), with automine off and
one HTTP request per block. Returns the number of logs on the chain. The node needs a block gas
limit for it: about 2,000 gas a log (``gas_limit_for``).
"""

from __future__ import annotations

import httpx

from tests.support.anvil import Anvil
from tests.support.contracts import deploy, web3_for

GAS_PER_LOG = 2_000  # measured: emitMany(5000) costs 9.65M gas (the first call the most)


def gas_limit_for(txs_per_block: int, logs_per_tx: int) -> int:
    """An anvil ``--gas-limit`` that fits a block of that many logs."""
    return max(30_000_000, txs_per_block * (logs_per_tx * GAS_PER_LOG + 100_000) + 1_000_000)


def mine_log_blocks(node: Anvil, *, blocks: int, txs_per_block: int, logs_per_tx: int) -> int:
    w3 = web3_for(node.url)
    emitter = deploy(w3, "LogEmitter")
    account = w3.eth.accounts[0]
    gas = logs_per_tx * GAS_PER_LOG + 100_000
    data = emitter.functions.emitMany(logs_per_tx).build_transaction(
        {"from": account, "gas": gas})["data"]
    node.rpc("evm_setAutomine", False)
    tx = {"from": account, "to": emitter.address, "data": data, "gas": hex(gas)}
    try:
        with httpx.Client(timeout=120) as client:
            for _ in range(blocks):
                calls = [{"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [tx]}
                         for i in range(txs_per_block)]
                calls.append({"jsonrpc": "2.0", "id": 99, "method": "anvil_mine", "params": ["0x1"]})
                replies = client.post(node.url, json=calls).json()
                if any("error" in reply for reply in replies):
                    raise RuntimeError(f"chain generation failed: {replies}")
    finally:
        node.rpc("evm_setAutomine", True)
    head = hex(node.head())
    last = len(node.rpc("eth_getLogs", {"fromBlock": head, "toBlock": head}))
    if last != txs_per_block * logs_per_tx:
        raise RuntimeError(f"the last block holds {last} logs, not {txs_per_block * logs_per_tx}: "
                           "raise the node's --gas-limit")
    return blocks * txs_per_block * logs_per_tx

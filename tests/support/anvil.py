"""A real anvil devnet on a free port; the binary from ``ANVIL_BIN``, ``PATH`` or node_modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES_ANVIL = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def anvil_binary() -> str:
    candidates = [os.environ.get("ANVIL_BIN"), shutil.which("anvil"), str(NODE_MODULES_ANVIL)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("no anvil binary: run `make install` (npm package @foundry-rs/anvil-linux-amd64) "
                       "or set ANVIL_BIN")


class Anvil:
    """A running anvil; ``rpc(method, *params)`` talks to it directly."""

    def __init__(self, *, chain_id: int = 31337, block_time: float | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.port = free_port()
        self.chain_id = chain_id
        args = [anvil_binary(), "--port", str(self.port), "--host", "127.0.0.1",
                "--chain-id", str(chain_id), "--silent", *(extra_args or [])]
        if block_time:
            args += ["--block-time", str(block_time)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.client = httpx.Client(timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.rpc("eth_chainId")
                break
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("anvil did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rpc(self, method: str, *params: Any) -> Any:
        reply = self.client.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                 "params": list(params)}).json()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", hex(blocks))

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

"""Several RPC endpoints (issue 14): failover on faults and on a dead endpoint, an endpoint behind
the best head kept off the tip, per-endpoint metrics under redacted labels, the endpoints' state
in ``rpc_endpoints`` and ``scripts/status.py``, and ``CONFIRMATIONS=finalized|safe``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3.contract import Contract

from core.errors import ConfigError
from ingest.endpoints import EndpointPool
from ingest.metrics import IngestMetrics
from ingest.poller import Indexer
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
from tests.support.contracts import deploy, web3_for
from tests.support.lagging_provider import LaggingProvider
from tests.support.ports import free_port
from tests.support.rpc_proxy import Fault, RpcProxy

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "k3y0123456789abcdefSECRET"  # must never reach a label, a row or the status output
METHODS = ("eth_chainId", "eth_blockNumber", "eth_getBlockByNumber", "eth_getLogs")


@pytest.fixture
def proxies(anvil: Anvil) -> Iterator[list[RpcProxy]]:
    servers = [RpcProxy(anvil.url), RpcProxy(anvil.url)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def behind(anvil: Anvil) -> Iterator[LaggingProvider]:
    """A node 6 blocks behind, always: far more than a few blocks."""
    server = LaggingProvider(anvil.url, lagging_share=1.0, lag=(6, 6))
    yield server
    server.close()


def _labels(metrics: IngestMetrics) -> set[str]:
    return {sample.labels["endpoint"] for metric in metrics.rpc_requests.collect()
            for sample in metric.samples}


async def test_failover_keeps_the_tip_off_a_node_behind_and_reports_every_endpoint(
        plain_db_url: str, anvil: Anvil, emitter: Contract, proxies: list[RpcProxy],
        behind: LaggingProvider) -> None:
    dead_port = free_port()
    dead = f"http://127.0.0.1:{dead_port}/v2/{API_KEY}"
    first, second = proxies
    # The node behind is listed first: routing, not the order, must keep it off the tip.
    urls = [f"{behind.url}/v3/{API_KEY}", dead, first.url, second.url]
    settings = ingest_settings(plain_db_url, ",".join(urls), poll_interval=0.05, rpc_timeout=2.0)
    emit_blocks(emitter, 8, 2)
    async with running_indexer(settings) as indexer:
        await wait_for_checkpoint(plain_db_url, anvil)
        # The healthy endpoint in use fails from now on: the pool moves to the other one.
        in_use = max(proxies, key=lambda p: sum(p.calls.values()))
        spare = second if in_use is first else first
        spare_calls = sum(spare.calls.values())
        for method in METHODS:
            in_use.fail(method, Fault.http(503), times=100_000)
        emit_blocks(emitter, 6, 2)
        await wait_for_checkpoint(plain_db_url, anvil)
        assert sum(spare.calls.values()) > spare_calls and sum(in_use.faults_served.values()) > 0
        await asyncio.sleep(5.5)  # one more write of rpc_endpoints (every 5 s)
        emit_blocks(emitter, 1, 1)
        await wait_for_checkpoint(plain_db_url, anvil)
        metrics = indexer.metrics

    stored = await stored_logs(plain_db_url)
    assert len(stored) == len(set(stored)) and set(stored) == chain_logs(anvil)
    assert not await fetch(plain_db_url, "SELECT 1 FROM reorgs")
    # Never asked for a block above its head: no null block, no clamped range.
    assert behind.stats["null_blocks"] == 0 and behind.stats["clamped_log_ranges"] == 0

    labels = _labels(metrics)
    assert len(labels) == 4 and not any(API_KEY in label for label in labels)
    assert f"http://127.0.0.1:{dead_port}/v2/***" in labels
    errors = {(s.labels["endpoint"], s.labels["kind"]): s.value
              for m in metrics.rpc_endpoint_errors.collect() for s in m.samples
              if s.name.endswith("_total")}
    assert any(kind == "unavailable" and "/v2/***" in label and count >= 1
               for (label, kind), count in errors.items())

    rows = await fetch(plain_db_url, "SELECT * FROM rpc_endpoints ORDER BY position")
    assert [r["position"] for r in rows] == [0, 1, 2, 3]
    assert not any(API_KEY in str(dict(r)) for r in rows)
    states = [r["state"] for r in rows]
    assert states[0] == "behind" and rows[0]["lag_blocks"] >= 5
    assert states[1] == "down" and rows[1]["health_score"] == 0
    assert "ok" in states[2:] and rows[1]["errors"] >= 1

    report = _status_json(plain_db_url, ",".join(urls))
    shown = [(e["position"], e["endpoint"], e["state"]) for e in report["endpoints"]]
    assert [position for position, _, _ in shown] == [0, 1, 2, 3]
    assert [state for _, _, state in shown] == states
    assert API_KEY not in json.dumps(report)
    assert [node["url"] for node in report["nodes"]][1].endswith("/v2/***")
    table = _status(plain_db_url, ",".join(urls))
    assert "RPC endpoints" in table and "behind" in table and API_KEY not in table


def _status(db_url: str, rpc_url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": "redis://127.0.0.1:1/0",
           "RPC_URL": rpc_url, "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "scripts/status.py", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _status_json(db_url: str, rpc_url: str) -> dict[str, object]:
    report: dict[str, object] = json.loads(_status(db_url, rpc_url, "--json"))
    return report


@pytest.fixture
def epoch_anvil() -> Iterator[Anvil]:
    """Two slots per epoch: ``safe`` is head − 2, ``finalized`` head − 4."""
    node = Anvil(extra_args=["--slots-in-an-epoch", "2"])
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.parametrize("tag", ["finalized", "safe"])
async def test_confirmations_follow_the_nodes_finality_tag(plain_db_url: str, epoch_anvil: Anvil,
                                                           tag: str) -> None:
    emitter = deploy(web3_for(epoch_anvil.url), "LogEmitter")
    emit_blocks(emitter, 6, 2)

    def tagged() -> int:
        return int(epoch_anvil.rpc("eth_getBlockByNumber", tag, False)["number"], 16)

    async def at_tag() -> bool:
        checkpoint = await checkpoint_of(plain_db_url)
        return checkpoint is not None and checkpoint[0] == tagged()

    settings = ingest_settings(plain_db_url, epoch_anvil.url, confirmations=tag, start_block=None)
    async with running_indexer(settings):
        await wait_until(at_tag, what=f"the checkpoint at the {tag} block")
        start = tagged()
        assert start < epoch_anvil.head()
        emit_blocks(emitter, 5, 2)
        await wait_until(at_tag, what=f"the checkpoint to follow the {tag} block")
        assert tagged() > start
        await asyncio.sleep(0.3)  # several polls: never past the tag
        assert (await checkpoint_of(plain_db_url) or (0,))[0] == tagged() < epoch_anvil.head()
    assert set(await stored_logs(plain_db_url)) == chain_logs(epoch_anvil, start, tagged())


async def test_a_node_without_the_finality_tag_is_a_configuration_error(
        plain_db_url: str, anvil: Anvil) -> None:
    proxy = RpcProxy(anvil.url)
    try:
        proxy.fail("eth_getBlockByNumber", Fault.rpc_error("invalid block tag: finalized"), times=3)
        settings = ingest_settings(plain_db_url, proxy.url, confirmations="finalized")
        async with EndpointPool(settings.rpc_endpoints) as source:
            with pytest.raises(ConfigError, match="CONFIRMATIONS=finalized: the node does not "
                                                  "serve a 'finalized' block"):
                await asyncio.wait_for(Indexer(settings, source).run(asyncio.Event()), 30)
    finally:
        proxy.close()


async def test_a_hanging_endpoint_does_not_slow_the_head_poll(anvil: Anvil) -> None:
    hanging = RpcProxy(anvil.url)
    try:
        hanging.fail("eth_blockNumber", Fault.timeout(20), times=100)
        async with EndpointPool([hanging.url, anvil.url], timeout=20) as pool:
            assert await pool.chain_id() == 31337
            loop = asyncio.get_running_loop()
            for _ in range(3):
                started = loop.time()
                assert await pool.head() == anvil.head()
                assert loop.time() - started < 2
            # One eth_blockNumber in flight at the hanging endpoint, not one per poll.
            assert hanging.calls["eth_blockNumber"] == 1
            assert [s.state for s in pool.statuses()] == ["ok", "ok"]
    finally:
        hanging.close()

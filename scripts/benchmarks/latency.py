"""End-to-end latency and burst throughput: chain → ingest → Postgres → processor → Redis →
workers → a signed POST verified by a real receiver, against a raw baseline in the same run.

Everything is started here: an anvil devnet with a real OpenZeppelin ERC20, a throwaway database
(plain: on the local server; timescale: a throwaway preloaded cluster) migrated with the real
alembic, a redis-server of our own, the Standard Webhooks receiver, and the three services as
subprocesses (``python -m ingest|processor|workers``) — the same harness as the e2e suite.

- latency: one ERC20 mint at a time; from the moment the node returns the mined transaction to
  the moment the receiver has verified its webhook. p50 and p95 over ``SAMPLES`` mints.
- burst: ``BURST_BLOCKS`` blocks of ``BURST_PER_BLOCK`` mints, sent as fast as anvil mines them;
  events per second from the first transaction to the last webhook received.
- baseline: the least any such system must do — poll the node at the same ``POLL_INTERVAL``,
  ``eth_getLogs`` the new blocks, sign each log and POST it to the same receiver — with no
  database, queue or retry state at all. The ratio is the price of the guarantees.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from scripts.benchmarks.report import Figure
from tests.e2e.chain import TOKEN, TRANSFER, Chain
from tests.e2e.pipeline import SECRET, Store
from tests.e2e.receiver import Receiver
from tests.e2e.redis_server import RedisServer
from tests.e2e.supervisor import Supervisor, child_env
from tests.support import databases
from tests.support.anvil import Anvil
from tests.support.pgcluster import TIMESCALE_LIBRARY, timescale_cluster

POLL_INTERVAL = 0.2
SAMPLES = 40
BURST_BLOCKS = 40
BURST_PER_BLOCK = 50
SERVICE_ENV = {
    "CHAIN_ID": "31337", "START_BLOCK": "0", "POLL_INTERVAL": str(POLL_INTERVAL),
    "PROCESSOR_SWEEP_INTERVAL": "2", "WEBHOOK_ALLOW_PRIVATE": "true", "LOG_FORMAT": "json",
    "LOG_LEVEL": "WARNING", "METRICS_PORT": "0",
}


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark timed out waiting for {what}")
        time.sleep(0.01)


def _arrivals(receiver: Receiver, path: str) -> dict[str, float]:
    """tx hash → when its first verified webhook arrived on ``path``."""
    arrived: dict[str, float] = {}
    for record in receiver.received():
        if record["path"] == path and record["verified"] and record["status"] == 200:
            arrived.setdefault(record["body"]["event"]["tx_hash"], record["received_at"])
    return arrived


def _wait_for_tx(receiver: Receiver, path: str, tx_hash: str, timeout: float = 30) -> None:
    _wait(lambda: tx_hash in _arrivals(receiver, path), timeout, f"the webhook of {tx_hash}")


def _measure(chain: Chain, receiver: Receiver, path: str) -> tuple[list[float], float]:
    """(latencies in ms of single mints, burst events/s) for whatever delivers to ``path``."""
    sent: dict[str, float] = {}
    for _ in range(SAMPLES):
        # With automine, eth_sendTransaction returns once the transaction is mined.
        tx_hash = chain.mint(chain.token_a, chain.accounts[1], TOKEN).lower()
        sent[tx_hash] = time.time()
        chain.wait(tx_hash)
        _wait_for_tx(receiver, path, tx_hash)
        time.sleep(0.05)
    arrived = _arrivals(receiver, path)
    latencies = [(arrived[h] - t) * 1000 for h, t in sent.items()]

    burst: list[str] = []
    started = time.time()
    for _ in range(BURST_BLOCKS):
        with chain.block():
            burst += [chain.mint(chain.token_a, chain.accounts[2], 1).lower()
                      for _ in range(BURST_PER_BLOCK)]
    _wait(lambda: len(set(burst) & set(_arrivals(receiver, path))) == len(burst), 300,
          "the burst's webhooks")
    arrived = _arrivals(receiver, path)
    rate = len(burst) / (max(arrived[h] for h in burst) - started)
    return latencies, rate


def _raw_baseline(node_url: str, target: str, stop: threading.Event) -> None:
    """Poll, fetch, sign, POST — in order, one keep-alive connection each way, nothing kept."""
    signer = Webhook(SECRET)
    with httpx.Client(timeout=10) as rpc, httpx.Client(timeout=10) as http:
        def call(method: str, *params: object) -> object:
            return rpc.post(node_url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                            "params": list(params)}).json()["result"]

        seen = int(str(call("eth_blockNumber")), 16)
        sequence = 0
        while not stop.is_set():
            head = int(str(call("eth_blockNumber")), 16)
            if head > seen:
                logs = call("eth_getLogs", {"fromBlock": hex(seen + 1), "toBlock": hex(head)})
                for log in logs:  # type: ignore[attr-defined]
                    sequence += 1
                    body = orjson.dumps({"type": "event.matched", "event": {
                        "tx_hash": log["transactionHash"], "log_index": log["logIndex"]}}).decode()
                    now = datetime.now(UTC)
                    msg_id = f"raw_{sequence}"
                    http.post(target, content=body, headers={
                        "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                        "webhook-signature": signer.sign(msg_id, now, body),
                        "content-type": "application/json"})
                seen = head
            stop.wait(POLL_INTERVAL)


def _database(backend: str) -> tuple[str, Callable[[], None]]:
    if backend == "timescale":
        cluster = timescale_cluster()
        url = databases.create_database(cluster.url, prefix="bh_bench")
        databases.alembic(url, "upgrade", "head")
        return url, cluster.destroy
    server = (os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
              or "postgresql://postgres@127.0.0.1:5432/postgres")
    url = databases.create_database(server, prefix="bh_bench")
    databases.alembic(url, "upgrade", "head")
    return url, lambda: databases.drop_database(url)


def _run_backend(backend: str) -> list[Figure]:
    workdir = Path(tempfile.mkdtemp(prefix=f"bh-latency-{backend}-"))
    node = Anvil()
    redis_server = RedisServer(log_path=workdir / "redis.log")
    redis_server.start()
    database_url, drop_database = _database(backend)
    receiver = Receiver(secret=SECRET, log_path=workdir / "receiver.log")
    chain = Chain(node).deploy()
    services = Supervisor(env=child_env(DATABASE_URL=database_url, REDIS_URL=redis_server.url,
                                        RPC_URL=node.url, **SERVICE_ENV), log_dir=workdir)
    try:
        Store(database_url).add_hook("bench-transfers", address=chain.token_a.address,
                                     signature=TRANSFER, url=receiver.url("hooks/pipeline"))
        for module in ("ingest", "processor", "workers"):
            services.add(module, module)
        warm_up = chain.mint(chain.token_a, chain.accounts[1], 1).lower()  # every path once
        _wait_for_tx(receiver, "/hooks/pipeline", warm_up, timeout=60)
        latencies, rate = _measure(chain, receiver, "/hooks/pipeline")
        services.stop_all()

        stop = threading.Event()
        baseline = threading.Thread(target=_raw_baseline,
                                    args=(node.url, receiver.url("hooks/raw"), stop), daemon=True)
        baseline.start()
        try:
            raw_latencies, raw_rate = _measure(chain, receiver, "/hooks/raw")
        finally:
            stop.set()
            baseline.join(10)
    finally:
        services.stop_all()
        chain.close()
        receiver.stop()
        node.stop()
        redis_server.stop()
        drop_database()

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1]

    note = f"POLL_INTERVAL={POLL_INTERVAL}s, {SAMPLES} mints"
    return [
        Figure(f"latency p50 mined→webhook [{backend}]", p(latencies, 50), "ms",
               baseline=p(raw_latencies, 50), bar=1000, higher_is_better=False, note=note),
        Figure(f"latency p95 mined→webhook [{backend}]", p(latencies, 95), "ms",
               baseline=p(raw_latencies, 95), bar=2000, higher_is_better=False, note=note),
        Figure(f"burst throughput end to end [{backend}]", rate, "events/s", baseline=raw_rate,
               note=f"{BURST_BLOCKS} blocks × {BURST_PER_BLOCK} Transfers, 1 trigger"),
    ]


def run(backend: str) -> list[Figure]:
    backends = ("plain", "timescale") if backend == "both" else (backend,)
    figures: list[Figure] = []
    for name in backends:
        if name == "timescale" and not TIMESCALE_LIBRARY.is_file():
            print(f"latency: skipping timescale ({TIMESCALE_LIBRARY} missing)")
            continue
        figures += _run_backend(name)
    return figures

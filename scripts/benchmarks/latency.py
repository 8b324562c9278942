"""End-to-end latency: chain → ingest → Postgres → processor → Redis/RQ → workers → a signed
webhook verified by a real receiver, next to a raw baseline in the same run (issue 8).

Everything is started here: an anvil devnet (automine) with a real OpenZeppelin ERC20, a throwaway
database migrated with the real alembic (``plain``: on the local server; ``timescale``: a throwaway
preloaded TimescaleDB cluster), a redis-server of our own, the e2e suite's Standard Webhooks
receiver in its own process (it verifies every signature with the reference library), and the
three services as they are deployed (``python -m ingest|processor|workers``, one process each,
``POLL_INTERVAL=0.2``).

- **steady latency**: one ERC20 mint every ``SEND_INTERVAL`` (100 ms) for ``DURATION`` (60 s),
  on an absolute schedule (a slow send does not shift the next one). Per transaction: from the
  moment it is handed to the node (``eth_sendTransaction``; automine mines it before replying) to
  the moment the receiver has verified its webhook. p50/p95/p99.
- **commit → enqueue**: per delivery of that run, from its event's commit to its RQ job being
  written. The commit is observed by a ``LISTEN blockhook_events`` connection of the benchmark's
  own: each notification's arrival time stamps the batches it makes visible (a conservative
  stamp — a batch can only become visible at or before the notification that reveals it, and the
  processor wakes on the very same notification). The end is ``deliveries.queued_at``, written
  right after the RQ pipeline returned.
- **burst**: ``BURST_BLOCKS`` blocks of ``BURST_PER_BLOCK`` mints, each block one batched
  JSON-RPC request, as fast as the node takes them; from the last block mined to the last
  webhook verified (how far behind the chain a burst leaves the pipeline; the send time, which
  bounds any events/s figure here, is printed beside it).
- **raw baseline** (same node, same receiver, same schedule): the least any such system must do —
  poll the node every ``POLL_INTERVAL``, ``eth_getLogs`` the new blocks, sign each log, POST them
  (as many in flight as one worker batch) — with no database, queue or retry state. The ratio is
  the price of the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import psycopg
from standardwebhooks.webhooks import Webhook

from scripts.benchmarks.report import Figure
from tests.e2e.pipeline import SECRET, Store
from tests.e2e.receiver import Receiver
from tests.e2e.redis_server import RedisServer
from tests.e2e.supervisor import Supervisor, child_env
from tests.support import databases
from tests.support.anvil import Anvil
from tests.support.contracts import deploy_erc20, web3_for
from tests.support.pgcluster import TIMESCALE_LIBRARY, timescale_cluster

POLL_INTERVAL = 0.2
SEND_INTERVAL = 0.1
DURATION = 60.0
DRAIN_TIMEOUT = 60.0
BURST_BLOCKS = 40
BURST_PER_BLOCK = 50
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICE_ENV = {
    "CHAIN_ID": "31337", "START_BLOCK": "0", "POLL_INTERVAL": str(POLL_INTERVAL),
    "PROCESSOR_SWEEP_INTERVAL": "2", "WEBHOOK_ALLOW_PRIVATE": "true", "LOG_FORMAT": "json",
    "LOG_LEVEL": "WARNING", "METRICS_PORT": "0",
}
# Bars of issue 8 (tx → webhook) and of the processor issue (commit → enqueue), in ms.
TX_TO_WEBHOOK_BARS = {50: 400.0, 99: 1200.0}
TX_TO_WEBHOOK_GOAL_P50 = 250.0
COMMIT_TO_ENQUEUE_BARS = {50: 10.0, 99: 50.0}
COMMIT_TO_ENQUEUE_GOALS = {50: 5.0, 99: 25.0}


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (inclusive method: exact at the sample's ends)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"latency benchmark timed out waiting for {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------ the chain side


class Minter:
    """Sends ERC20 mints (one ``Transfer`` each) straight to the node, over one keep-alive
    connection; anvil signs for its dev accounts, so a send is one JSON-RPC round trip."""

    def __init__(self, node: Anvil) -> None:
        w3 = web3_for(node.url)
        accounts: list[str] = list(w3.eth.accounts)
        self.token = deploy_erc20(w3, "Bench Token", "BNCH")
        self.address = self.token.address
        self._url = node.url
        self._tx = {"from": accounts[0], "to": self.token.address, "gas": hex(200_000),
                    "data": self.token.encode_abi("mint", args=[accounts[1], 10**18])}
        self._http = httpx.Client(timeout=30)

    def _call(self, payload: object) -> Any:
        return orjson.loads(self._http.post(self._url, content=orjson.dumps(payload),
                                            headers={"content-type": "application/json"}).content)

    def mint(self) -> str:
        reply = self._call({"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction",
                            "params": [self._tx]})
        if "error" in reply:
            raise RuntimeError(f"mint failed: {reply['error']}")
        return str(reply["result"]).lower()

    def block_of_mints(self, count: int) -> list[str]:
        """``count`` mints in one block: one batched request with automine off, then a mine."""
        self._call({"jsonrpc": "2.0", "id": 1, "method": "evm_setAutomine", "params": [False]})
        try:
            calls: list[dict[str, Any]] = [
                {"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction", "params": [self._tx]}
                for i in range(count)]
            calls.append({"jsonrpc": "2.0", "id": count, "method": "evm_mine", "params": []})
            replies = self._call(calls)
        finally:
            self._call({"jsonrpc": "2.0", "id": 1, "method": "evm_setAutomine", "params": [True]})
        if any("error" in reply for reply in replies):
            raise RuntimeError(f"burst block failed: {replies}")
        return [str(r["result"]).lower() for r in sorted(replies, key=lambda r: r["id"])[:count]]

    def close(self) -> None:
        self._http.close()


@dataclass
class Steady:
    """What a steady run sent: tx hash → wall-clock send time, and how late sends were."""

    sent: dict[str, float] = field(default_factory=dict)
    max_lag_ms: float = 0.0


def send_steady(minter: Minter) -> Steady:
    """One mint every ``SEND_INTERVAL`` for ``DURATION`` on an absolute schedule."""
    result = Steady()
    origin = time.perf_counter()
    for tick in range(int(DURATION / SEND_INTERVAL)):
        due = origin + tick * SEND_INTERVAL
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        result.max_lag_ms = max(result.max_lag_ms, (time.perf_counter() - due) * 1000)
        sent_at = time.time()
        result.sent[minter.mint()] = sent_at
    return result


def send_burst(minter: Minter) -> tuple[list[str], float, float]:
    """The burst's tx hashes, when sending began and when its last block was mined."""
    started = time.time()
    hashes: list[str] = []
    for _ in range(BURST_BLOCKS):
        hashes += minter.block_of_mints(BURST_PER_BLOCK)
    return hashes, started, time.time()


# ------------------------------------------------------------------------------ the receiver side


def arrivals(receiver: Receiver, path: str) -> dict[str, float]:
    """tx hash → when its first verified, accepted webhook arrived on ``path``."""
    arrived: dict[str, float] = {}
    for record in receiver.received():
        if record["path"] == path and record["verified"] and record["status"] == 200:
            arrived.setdefault(record["body"]["event"]["tx_hash"], record["received_at"])
    return arrived


def wait_for(receiver: Receiver, path: str, hashes: list[str], what: str) -> dict[str, float]:
    """Wait until every tx in ``hashes`` has its webhook on ``path``; return the arrivals."""
    wanted = set(hashes)
    state: dict[str, dict[str, float]] = {"arrived": {}}

    def done() -> bool:
        state["arrived"] = arrivals(receiver, path)
        return wanted <= state["arrived"].keys()

    try:
        _wait(done, DRAIN_TIMEOUT, what)
    except TimeoutError as error:
        missing = len(wanted - state["arrived"].keys())
        raise TimeoutError(f"{error}: {missing} of {len(wanted)} webhooks missing") from None
    return state["arrived"]


# ------------------------------------------------------------------------------ commit stamps


class CommitWatcher:
    """``LISTEN blockhook_events`` on a connection of its own; every notification's arrival time
    stamps the event batches that became visible with it (see the module docstring)."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.batches: list[tuple[int, int, float]] = []  # (first_id, last_id, committed_at)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="commit-watcher", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("commit watcher did not start")

    def _run(self) -> None:
        try:
            with psycopg.connect(self._url, autocommit=True) as conn:
                conn.execute("LISTEN blockhook_events")
                last = conn.execute("SELECT coalesce(max(id), 0) FROM event_batches").fetchone()
                last_batch = int(last[0]) if last else 0
                self._ready.set()
                while not self._stop.is_set():
                    # The generator holds the connection until it ends: query after it.
                    if not list(conn.notifies(timeout=0.5, stop_after=1)):
                        continue
                    seen_at = time.time()
                    rows = conn.execute(
                        "SELECT id, first_id, last_id FROM event_batches WHERE id > %s "
                        "ORDER BY id", (last_batch,)).fetchall()
                    for batch_id, first_id, last_id in rows:
                        self.batches.append((int(first_id), int(last_id), seen_at))
                        last_batch = max(last_batch, int(batch_id))
        except BaseException as error:  # reported by stop(); a thread must not die silently
            self._error = error
            self._ready.set()

    def committed_at(self, event_id: int) -> float | None:
        for first_id, last_id, seen_at in self.batches:
            if first_id <= event_id <= last_id:
                return seen_at
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._error is not None:
            raise RuntimeError(f"commit watcher failed: {self._error!r}")


# ------------------------------------------------------------------------------ raw baseline


RAW_CONCURRENCY = 50  # POSTs in flight, as one worker sends one batch


async def _raw_pipeline(node_url: str, target: str, seen: int, stop: threading.Event) -> None:
    signer = Webhook(SECRET)
    limit = asyncio.Semaphore(RAW_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=RAW_CONCURRENCY)
    async with aiohttp.ClientSession() as rpc, aiohttp.ClientSession(connector=connector) as http:
        async def call(method: str, *params: object) -> Any:
            payload = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
            async with rpc.post(node_url, data=orjson.dumps(payload),
                                headers={"content-type": "application/json"}) as reply:
                return orjson.loads(await reply.read())["result"]

        async def post(msg_id: str, log: dict[str, Any]) -> None:
            body = orjson.dumps({"type": "event.matched", "event": {
                "tx_hash": log["transactionHash"], "log_index": log["logIndex"]}}).decode()
            now = datetime.now(UTC)
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": signer.sign(msg_id, now, body),
                       "content-type": "application/json"}
            async with limit, http.post(target, data=body, headers=headers) as reply:
                await reply.read()

        sequence = 0
        while not stop.is_set():
            head = int(str(await call("eth_blockNumber")), 16)
            if head > seen:
                logs = await call("eth_getLogs", {"fromBlock": hex(seen + 1), "toBlock": hex(head)})
                await asyncio.gather(*(post(f"raw_{sequence + n}", log)
                                       for n, log in enumerate(logs, start=1)))
                sequence += len(logs)
                seen = head
            await asyncio.sleep(POLL_INTERVAL)


def raw_pipeline(node_url: str, target: str, seen: int, stop: threading.Event) -> None:
    """Poll every ``POLL_INTERVAL``, fetch the logs after block ``seen``, sign each and POST them
    (``RAW_CONCURRENCY`` in flight, keep-alive aiohttp) — nothing stored, nothing retried."""
    asyncio.run(_raw_pipeline(node_url, target, seen, stop))


# ------------------------------------------------------------------------------ runs


@dataclass
class Measured:
    latencies_ms: list[float]
    burst_drain_ms: float
    burst_send_ms: float
    max_send_lag_ms: float
    steady_txs: set[str] = field(default_factory=set)
    commit_to_enqueue_ms: list[float] = field(default_factory=list)
    tx_start_to_enqueue_ms: list[float] = field(default_factory=list)
    sent_before_marked: int = 0
    unstamped: int = 0


def measure(minter: Minter, receiver: Receiver, path: str) -> Measured:
    """The steady run, then the burst, against whatever delivers to ``path``."""
    steady = send_steady(minter)
    arrived = wait_for(receiver, path, list(steady.sent), "the steady run's webhooks")
    latencies = [(arrived[tx] - sent_at) * 1000 for tx, sent_at in steady.sent.items()]
    burst, started, mined = send_burst(minter)
    arrived = wait_for(receiver, path, burst, "the burst's webhooks")
    drain_ms = (max(arrived[tx] for tx in burst) - mined) * 1000
    return Measured(latencies, drain_ms, (mined - started) * 1000, steady.max_lag_ms,
                    steady_txs=set(steady.sent))


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A migrated throwaway database on ``backend``; dropped (or its cluster destroyed) after."""
    if backend == "timescale":
        cluster = timescale_cluster()
        try:
            url = databases.create_database(cluster.url, prefix="bh_bench")
            databases.alembic(url, "upgrade", "head")
            yield url
        finally:
            cluster.destroy()
        return
    server = (os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
              or LOCAL_SERVER).replace("postgres://", "postgresql://", 1)
    url = databases.create_database(server, prefix="bh_bench")
    try:
        databases.alembic(url, "upgrade", "head")
        yield url
    finally:
        databases.drop_database(url)


def run_pipeline(backend: str, workdir: Path) -> Measured:
    with contextlib.ExitStack() as cleanup:  # everything started is stopped, in reverse order
        node = Anvil()
        cleanup.callback(node.stop)
        redis_server = RedisServer(log_path=workdir / "redis.log")
        cleanup.callback(redis_server.stop)
        redis_server.start()
        receiver = Receiver(secret=SECRET, log_path=workdir / "receiver.log")
        cleanup.callback(receiver.stop)
        minter = Minter(node)
        cleanup.callback(minter.close)
        url = cleanup.enter_context(database(backend))
        Store(url).add_hook("bench-transfers", address=minter.address, signature=TRANSFER,
                            url=receiver.url("hooks/pipeline"))
        services = Supervisor(env=child_env(DATABASE_URL=url, REDIS_URL=redis_server.url,
                                            RPC_URL=node.url, **SERVICE_ENV), log_dir=workdir)
        try:
            for module in ("ingest", "processor", "workers"):
                services.add(module, module)
            # Every path once (imports, connections, prepared statements) before measuring.
            wait_for(receiver, "/hooks/pipeline", [minter.mint()], "the warm-up webhook")
            watcher = CommitWatcher(url)
            try:
                result = measure(minter, receiver, "/hooks/pipeline")
            finally:
                watcher.stop()
            services.assert_running()
        finally:
            services.stop_all()
        _commit_to_enqueue(url, watcher, result)
        return result


def _commit_to_enqueue(url: str, watcher: CommitWatcher, result: Measured) -> None:
    """The steady run's deliveries only (the burst measures throughput, not latency). A delivery
    that a worker had already sent before the processor's "mark queued" statement reached it
    keeps ``queued_at`` empty (that statement only moves ``pending`` rows): counted apart."""
    rows = Store(url).rows(
        """SELECT d.event_id, e.tx_hash, extract(epoch FROM d.queued_at)::float8 AS queued,
                  extract(epoch FROM d.queued_at - d.event_committed_at)::float8 * 1000
                    AS metric_ms
           FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.kind = 'matched'""")
    for row in rows:
        if row["tx_hash"] not in result.steady_txs:
            continue
        committed = watcher.committed_at(int(row["event_id"]))
        if row["queued"] is None:
            result.sent_before_marked += 1
        elif committed is None:
            result.unstamped += 1
        else:
            result.commit_to_enqueue_ms.append((float(row["queued"]) - committed) * 1000)
            result.tx_start_to_enqueue_ms.append(float(row["metric_ms"]))


def run_baseline(workdir: Path) -> Measured:
    with contextlib.ExitStack() as cleanup:
        node = Anvil()
        cleanup.callback(node.stop)
        receiver = Receiver(secret=SECRET, log_path=workdir / "receiver-raw.log")
        cleanup.callback(receiver.stop)
        minter = Minter(node)
        cleanup.callback(minter.close)
        stop = threading.Event()
        poller = threading.Thread(target=raw_pipeline, name="raw-pipeline", daemon=True,
                                  args=(node.url, receiver.url("hooks/raw"), node.head(), stop))
        poller.start()
        cleanup.callback(poller.join, 10)
        cleanup.callback(stop.set)
        wait_for(receiver, "/hooks/raw", [minter.mint()], "the raw warm-up webhook")
        return measure(minter, receiver, "/hooks/raw")


def figures_for(backend: str, real: Measured, raw: Measured) -> list[Figure]:
    samples = len(real.latencies_ms)
    note = (f"{samples} txs, 1 per {SEND_INTERVAL * 1000:.0f} ms for {DURATION:.0f} s, "
            f"POLL_INTERVAL={POLL_INTERVAL}s; max send lag {real.max_send_lag_ms:.0f} ms")
    figures = []
    for q in (50, 95, 99):
        figures.append(Figure(f"latency p{q} tx sent→webhook verified [{backend}]",
                              percentile(real.latencies_ms, q), "ms",
                              baseline=percentile(raw.latencies_ms, q),
                              bar=TX_TO_WEBHOOK_BARS.get(q), higher_is_better=False,
                              goal=TX_TO_WEBHOOK_GOAL_P50 if q == 50 else None,
                              note=note if q == 50 else ""))
    enqueue = real.commit_to_enqueue_ms
    for q in (50, 95, 99):
        note = ""
        if q == 50:
            note = (f"{len(enqueue)} deliveries ({real.sent_before_marked} sent before marked "
                    f"queued, {real.unstamped} without a commit stamp: not counted); commit "
                    f"seen by LISTEN; from the ingest "
                    f"transaction's start (the processor's histogram): "
                    f"p50 {percentile(real.tx_start_to_enqueue_ms, 50):.1f} ms, "
                    f"p99 {percentile(real.tx_start_to_enqueue_ms, 99):.1f} ms")
        figures.append(Figure(f"latency p{q} event committed→job enqueued [{backend}]",
                              percentile(enqueue, q), "ms", bar=COMMIT_TO_ENQUEUE_BARS.get(q),
                              goal=COMMIT_TO_ENQUEUE_GOALS.get(q), higher_is_better=False,
                              note=note))
    figures.append(Figure(f"burst: last block mined→last webhook [{backend}]",
                          real.burst_drain_ms, "ms", baseline=raw.burst_drain_ms,
                          higher_is_better=False,
                          note=f"{BURST_BLOCKS * BURST_PER_BLOCK:,} Transfers in {BURST_BLOCKS} "
                               f"blocks sent in {real.burst_send_ms:,.0f} ms; 1 trigger, 1 worker "
                               "process"))
    return figures


def run(backend: str = "both") -> list[Figure]:
    backends: tuple[str, ...] = ("plain", "timescale") if backend == "both" else (backend,)
    if "timescale" in backends and not TIMESCALE_LIBRARY.is_file():
        print(f"latency: skipping timescale ({TIMESCALE_LIBRARY} missing)", flush=True)
        backends = tuple(b for b in backends if b != "timescale")
    with tempfile.TemporaryDirectory(prefix="bh-bench-latency-") as scratch:
        workdir = Path(scratch)
        raw = run_baseline(workdir)
        figures: list[Figure] = []
        for name in backends:
            figures += figures_for(name, run_pipeline(name, workdir), raw)
    return figures

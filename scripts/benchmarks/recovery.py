"""Recovery time: how long after a fault ends until every webhook it held back has arrived.

The e2e suite proves that nothing is lost across ``kill -9``, a Postgres restart and a Redis
outage; this measures what the suite only bounds — the delay a user sees. Everything is started
here with the e2e harness: an anvil devnet with a real OpenZeppelin ERC20, a throwaway PostgreSQL
cluster of our own (``plain``; ``timescale``: preloaded) migrated with the real alembic (a cluster,
not a database on the shared server, so it can be restarted), a redis-server of our own, the
Standard Webhooks receiver, and the three services as subprocesses.

For each fault: the fault starts, ``EVENTS`` ERC20 mints (blocks of ``PER_BLOCK``) are produced
while it lasts, the fault ends (the killed service is started again, the server comes back), and
the clock runs from that moment until the receiver has verified the webhook of every one of them.
The baseline is the same batch with no fault: from its last block mined to its last webhook.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from scripts.benchmarks.report import Figure
from tests.e2e.chain import TRANSFER, Chain
from tests.e2e.pipeline import SECRET, Store
from tests.e2e.receiver import Receiver
from tests.e2e.redis_server import RedisServer
from tests.e2e.supervisor import Supervisor, child_env
from tests.support import databases
from tests.support.anvil import Anvil
from tests.support.pgcluster import TIMESCALE_LIBRARY, PgCluster

EVENTS = 200
PER_BLOCK = 20
OUTAGE_SECONDS = 3.0
BAR_SECONDS = 10.0  # a fault should cost a user seconds, not minutes
SERVICE_ENV = {
    "CHAIN_ID": "31337", "START_BLOCK": "0", "POLL_INTERVAL": "0.2",
    "PROCESSOR_SWEEP_INTERVAL": "2", "WEBHOOK_ALLOW_PRIVATE": "true", "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO", "METRICS_PORT": "0",
}


class Bench:
    """One pipeline on one backend, and the stopwatch."""

    def __init__(self, backend: str, workdir: Path) -> None:
        settings = {"authentication_timeout": "5s"}
        if backend == "timescale":
            settings |= {"shared_preload_libraries": "timescaledb",
                         "timescaledb.telemetry_level": "off"}
        self.cluster = PgCluster(settings=settings)
        self.cluster.start()
        self.database_url = databases.create_database(self.cluster.url, prefix="bh_bench")
        databases.alembic(self.database_url, "upgrade", "head")
        self.node = Anvil()
        self.redis = RedisServer(log_path=workdir / "redis.log")
        self.redis.start()
        self.receiver = Receiver(secret=SECRET, log_path=workdir / "receiver.log")
        self.chain = Chain(self.node).deploy()
        Store(self.database_url).add_hook("bench", address=self.chain.token_a.address,
                                          signature=TRANSFER, url=self.receiver.url("hooks/bench"))
        self.services = Supervisor(env=child_env(
            DATABASE_URL=self.database_url, REDIS_URL=self.redis.url, RPC_URL=self.node.url,
            **SERVICE_ENV), log_dir=workdir)
        for module in ("ingest", "processor", "workers"):
            self.services.add(module, module)
        self.value = 0

    def produce(self) -> set[str]:
        """``EVENTS`` mints with distinct values; returns their tx hashes."""
        hashes: set[str] = set()
        for _ in range(EVENTS // PER_BLOCK):
            with self.chain.block():
                for _ in range(PER_BLOCK):
                    self.value += 1
                    hashes.add(self.chain.mint(self.chain.token_a, self.chain.accounts[1],
                                               self.value).lower())
        return hashes

    def wait_delivered(self, hashes: set[str], timeout: float = 300.0) -> float:
        """Block until every tx's webhook has been verified; return when the last one arrived."""
        deadline = time.monotonic() + timeout
        while True:
            arrived = {r["body"]["event"]["tx_hash"]: r["received_at"]
                       for r in self.receiver.received() if r["verified"] and r["status"] == 200}
            if hashes <= arrived.keys():
                return max(arrived[h] for h in hashes)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(hashes - arrived.keys())} webhooks missing\n"
                                   f"{self.services.report()}")
            time.sleep(0.05)

    def recovery(self, start: Callable[[], None], end: Callable[[], None]) -> float:
        """Seconds from the end of a fault to the last held-back webhook."""
        start()
        hashes = self.produce()
        time.sleep(OUTAGE_SECONDS)
        end()
        ended = time.time()
        return self.wait_delivered(hashes) - ended

    def baseline(self) -> float:
        hashes = self.produce()
        produced = time.time()
        return self.wait_delivered(hashes) - produced

    def close(self) -> None:
        self.services.stop_all()
        self.chain.close()
        self.receiver.stop()
        self.node.stop()
        self.redis.stop()
        self.cluster.destroy()


def _run_backend(backend: str) -> list[Figure]:
    bench = Bench(backend, Path(tempfile.mkdtemp(prefix=f"bh-recovery-{backend}-")))
    try:
        bench.wait_delivered(bench.produce())  # warm-up: every path once
        baseline = bench.baseline()
        results: dict[str, float] = {}
        for name in ("ingest", "processor"):
            service = bench.services[name]
            results[f"kill -9 {name}"] = bench.recovery(service.kill, service.start)
        results["Postgres down"] = bench.recovery(lambda: bench.cluster.stop("fast"),
                                                  bench.cluster.start)
        results["Redis down (restarts empty)"] = bench.recovery(bench.redis.stop, bench.redis.start)
        # Last: a killed worker leaves RQ's scheduler lock to expire (~61 s), which would hold
        # back the job retries a later fault relies on (tests/e2e/test_worker_restart.py).
        workers = bench.services["workers"]
        results["kill -9 workers"] = bench.recovery(workers.kill, workers.start)
    finally:
        bench.close()
    note = f"{EVENTS} events held back, fault lasting ≥ {OUTAGE_SECONDS:g}s"
    return [Figure(f"recovery after {fault} [{backend}]", seconds, "s", baseline=baseline,
                   bar=BAR_SECONDS, higher_is_better=False, note=note)
            for fault, seconds in results.items()]


def run(backend: str) -> list[Figure]:
    backends = ("plain", "timescale") if backend == "both" else (backend,)
    figures: list[Figure] = []
    for name in backends:
        if name == "timescale" and not TIMESCALE_LIBRARY.is_file():
            print(f"recovery: skipping timescale ({TIMESCALE_LIBRARY} missing)")
            continue
        figures += _run_backend(name)
    return figures

"""Live latency during a large refire, against the same pipeline idle (issue 15).

Everything as deployed (``python -m ingest|processor|workers``, one process each, a redis-server
of our own, an anvil devnet with a real ERC20, the e2e receiver verifying every signature; two
receivers, so the refire's webhooks do not slow the live one's bookkeeping). A live trigger
watches the ERC20's ``Transfer``; ``BENCH_REFIRE_EVENTS`` (default 100,000) stored, already
processed events of another contract are the history of a trigger added afterwards.

- **idle**: one mint every ``SEND_INTERVAL`` for ``STEADY_SECONDS``; per transaction, handed to
  the node → its webhook verified by the receiver; p50 (and p95).
- **during refire**: the history trigger is added, ``scripts/replay.py --refire`` starts over the
  whole chain (its replay part runs alongside the live indexer), and the same steady mints run
  while the refire's deliveries are created and sent. The refire's deliveries still unsent when
  the steady run ends are printed with the figure (the window must overlap the refire to mean
  anything).

The idle figure is the baseline; the bar of issue 15 is p50 during the refire within 2x of it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from core.abi import parse_event_signature
from scripts.benchmarks.latency import (
    SERVICE_ENV,
    TRANSFER,
    Minter,
    database,
    percentile,
    wait_for,
)
from scripts.benchmarks.report import Figure
from tests.e2e.pipeline import SECRET, Store
from tests.e2e.receiver import Receiver
from tests.e2e.redis_server import RedisServer
from tests.e2e.supervisor import Supervisor, child_env
from tests.support.anvil import Anvil

ROOT = Path(__file__).resolve().parents[2]
REFIRE_EVENTS = int(os.environ.get("BENCH_REFIRE_EVENTS", "100000"))
STEADY_SECONDS = 20.0
SEND_INTERVAL = 0.2
HISTORY_ADDRESS = "0x" + "cd" * 20
BAR_RATIO = 2.0

# History on the chain's real blocks (hash and time): a replay would take events with another
# hash at a height for a reorg's orphans and invalidate them. log_index from 1000 up, past the
# real logs of the block.
_HISTORY = """
INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash, tx_index, log_index,
                    address, topic0, topic1, topic2, data)
SELECT 31337, b.number, b.hash, b.time, '0xff' || lpad(to_hex(n), 62, '0'), 0,
       1000 + n / %(blocks)s, %(address)s, %(topic0)s,
       '0x' || lpad('1', 64, '0'), '0x' || lpad('2', 64, '0'), '0x' || lpad(to_hex(n), 64, '0')
FROM generate_series(0, %(count)s - 1) AS n
JOIN unnest(%(numbers)s::bigint[], %(hashes)s::text[], %(times)s::timestamptz[])
     AS b(number, hash, time) ON b.number = n %% %(blocks)s"""


def steady(minter: Minter, receiver: Receiver) -> list[float]:
    """One mint every ``SEND_INTERVAL`` for ``STEADY_SECONDS``; per tx, sent → verified (ms)."""
    sent: dict[str, float] = {}
    origin = time.perf_counter()
    for tick in range(int(STEADY_SECONDS / SEND_INTERVAL)):
        pause = origin + tick * SEND_INTERVAL - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        sent_at = time.time()
        sent[minter.mint()] = sent_at
    arrived = wait_for(receiver, "/hooks/live", list(sent), "the steady run's webhooks")
    return [(arrived[tx] - at) * 1000 for tx, at in sent.items()]


def _store_history(url: str, node: Anvil, topic0: str) -> None:
    """Stored, already processed events (their batches marked in the inserting transaction, so
    no processor ever sees them as new), spread over the chain's blocks."""
    blocks = [node.rpc("eth_getBlockByNumber", hex(n), False) for n in range(node.head() + 1)]
    with psycopg.connect(url) as conn:
        conn.execute(_HISTORY, {
            "blocks": len(blocks), "address": HISTORY_ADDRESS, "topic0": topic0,
            "count": REFIRE_EVENTS, "numbers": [int(b["number"], 16) for b in blocks],
            "hashes": [b["hash"].lower() for b in blocks],
            "times": [datetime.fromtimestamp(int(b["timestamp"], 16), UTC) for b in blocks]})
        conn.execute("UPDATE event_batches SET processed_at = now() WHERE processed_at IS NULL")


def _refire_deliveries(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM deliveries WHERE replay").fetchone()
    return int(row[0]) if row else 0


def _unsent_refire(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM deliveries WHERE replay AND status <> "
                           "'delivered'").fetchone()
    return int(row[0]) if row else 0


def _kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def run(backend: str = "plain") -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bh-bench-refire-") as scratch, \
            contextlib.ExitStack() as cleanup:
        workdir = Path(scratch)
        node = Anvil()
        cleanup.callback(node.stop)
        redis_server = RedisServer(log_path=workdir / "redis.log")
        cleanup.callback(redis_server.stop)
        redis_server.start()
        live_receiver = Receiver(secret=SECRET, log_path=workdir / "live.log")
        cleanup.callback(live_receiver.stop)
        history_receiver = Receiver(secret=SECRET, log_path=workdir / "history.log")
        cleanup.callback(history_receiver.stop)
        minter = Minter(node)
        cleanup.callback(minter.close)
        url = cleanup.enter_context(database("plain"))
        store = Store(url)
        store.add_hook("live-transfers", address=minter.address, signature=TRANSFER,
                       url=live_receiver.url("hooks/live"))
        env = child_env(DATABASE_URL=url, REDIS_URL=redis_server.url, RPC_URL=node.url,
                        **SERVICE_ENV)
        services = Supervisor(env=env, log_dir=workdir)
        cleanup.callback(services.stop_all)
        for module in ("ingest", "processor", "workers"):
            services.add(module, module)
        wait_for(live_receiver, "/hooks/live", [minter.mint()], "the warm-up webhook")
        _store_history(url, node, parse_event_signature(TRANSFER).topic0)

        idle = steady(minter, live_receiver)

        store.add_hook("history", address=HISTORY_ADDRESS, signature=TRANSFER,
                       url=history_receiver.url("hooks/history"))
        head = node.head()
        print(f"refire of {REFIRE_EVENTS:,} events starts", flush=True)
        refire = subprocess.Popen(
            [sys.executable, "scripts/replay.py", "--chain-id", "31337", "--from-block", "0",
             "--to-block", str(head), "--refire"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=(workdir / "refire.log").open("w"))
        cleanup.callback(_kill_if_running, refire)
        started = time.monotonic()
        during = steady(minter, live_receiver)
        unsent_after = _unsent_refire(url)
        if refire.wait(600) != 0:
            raise RuntimeError(f"the refire failed: {(workdir / 'refire.log').read_text()[-2000:]}")
        refire_seconds = time.monotonic() - started
        created = _refire_deliveries(url)
        if created != REFIRE_EVENTS:
            raise RuntimeError(f"the refire created {created} deliveries, not {REFIRE_EVENTS}")
        services.assert_running()
        drained_by = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if not _unsent_refire(url):
                drained_by = time.monotonic() - started
                break
            time.sleep(1)
    idle_p50, during_p50 = percentile(idle, 50), percentile(during, 50)
    note = (f"{len(during)} live txs, 1 per {SEND_INTERVAL * 1000:.0f} ms for "
            f"{STEADY_SECONDS:.0f} s; {unsent_after:,} of {REFIRE_EVENTS:,} refire deliveries "
            f"still unsent when the window ended; refire command {refire_seconds:.0f} s, all "
            f"its webhooks sent after {'n/a' if drained_by is None else f'{drained_by:.0f}'} s")
    return [
        Figure("live tx→webhook p50 during a refire [plain]", during_p50, "ms",
               baseline=idle_p50, bar=idle_p50 * BAR_RATIO, higher_is_better=False, note=note),
        Figure("live tx→webhook p95 during a refire [plain]", percentile(during, 95), "ms",
               baseline=percentile(idle, 95), higher_is_better=False),
    ]

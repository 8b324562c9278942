"""Issue 11: the reorg detector's and replay's hot queries carry a ``block_time`` bound, so on a
hypertable with many chunks they touch only the chunks of recent blocks (EXPLAIN shows it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from ingest.reorg import INVALIDATE_ABOVE_ANCESTOR
from ingest.replay import FORK_TIME_SLACK, STORED_BLOCK_HASHES
from tests.support import databases

OLD_CHUNKS = 40


async def test_reorg_and_replay_queries_touch_only_recent_chunks(timescale_database: str) -> None:
    databases.truncate_all(timescale_database)
    conn = await asyncpg.connect(timescale_database)
    try:
        # One event per day for 40 days: 40 chunks at the default 1-day interval.
        await conn.execute(
            """INSERT INTO events (chain_id, block_number, block_hash, block_time, tx_hash,
                                   tx_index, log_index, address, data)
               SELECT 31337, 1000 - d, '0x' || d, now() - make_interval(days => d), '0x', 0, 0,
                      '0x', '0x' FROM generate_series(0, $1 - 1) AS d""", OLD_CHUNKS)
        chunks = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'events'")
        assert chunks >= OLD_CHUNKS
        recent = datetime.now(UTC) - timedelta(hours=1)
        plans = {
            "reorg": await conn.fetch("EXPLAIN " + INVALIDATE_ABOVE_ANCESTOR, 31337, 990, recent),
            "replay": await conn.fetch("EXPLAIN " + STORED_BLOCK_HASHES, 31337, 995, 1000,
                                       recent - FORK_TIME_SLACK, recent + FORK_TIME_SLACK),
        }
        for name, rows in plans.items():
            plan = "\n".join(row[0] for row in rows)
            scanned = {word for word in plan.split() if word.startswith("_hyper_")
                       and word.endswith("_chunk")}
            # The replay window (now - 1 h ± FORK_TIME_SLACK) spans two days: three day chunks
            # when it does not start on a chunk boundary, never the forty.
            assert 1 <= len(scanned) <= 3, f"{name} plan scans {len(scanned)} chunks:\n{plan}"
        # The bound cannot hide what it must find: the recent events are really updated.
        status = await conn.execute(INVALIDATE_ABOVE_ANCESTOR, 31337, 998, recent - timedelta(days=2))
        assert status == "UPDATE 2"
    finally:
        await conn.close()

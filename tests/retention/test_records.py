"""Retention of the pipeline's records, on both backends: processed batches, final deliveries,
corrected reorgs and blocks below the window go; unprocessed batches, open deliveries, delivered
matches a reorg could still correct, uncorrected reorgs and the window's blocks stay."""

from __future__ import annotations

from datetime import UTC, datetime

from core.db import connect
from retention.policy import BLOCKS_MARGIN, RetentionPolicy
from retention.runner import RetentionRunner
from tests.retention.rows import action, days, delivery, insert_events, set_checkpoint


def test_blocks_margin_is_the_indexers() -> None:
    from ingest.poller import BLOCKS_MARGIN as INGEST_MARGIN

    assert BLOCKS_MARGIN == INGEST_MARGIN


async def test_records_age_out_and_what_is_needed_stays(db_url: str) -> None:
    now = datetime.now(UTC)
    old, recent = now - days(40), now - days(1 / 24)
    conn = await connect(db_url)
    try:
        # Events: 4 outside the window (blocks 1..4), 2 inside (blocks 990..991, checkpoint 1000).
        outside = await insert_events(conn, blocks=range(1, 5), at=now - days(2))
        inside = await insert_events(conn, blocks=range(990, 992), at=now - days(1 / 48))
        await set_checkpoint(conn, 1000)
        ids = await action(conn)
        kept = {
            await delivery(conn, ids, outside[0], status="pending", created=old),
            await delivery(conn, ids, outside[1], status="queued", created=old),
            # delivered matches of window events: a reorg there needs them for event.removed
            await delivery(conn, ids, inside[0], status="delivered", created=old),
            await delivery(conn, ids, outside[2], status="delivered", created=recent),
        }
        gone = {
            await delivery(conn, ids, outside[0], status="delivered", kind="removed", created=old),
            await delivery(conn, ids, outside[3], status="failed", created=old),
            await delivery(conn, ids, outside[1], status="delivered", kind="removed", created=old),
            await delivery(conn, ids, inside[1], status="cancelled", created=old),
            await delivery(conn, ids, inside[1], status="delivered", kind="removed", created=old),
        }
        # Batches: the two processed above, one processed 3 days ago, one unprocessed from then.
        await conn.execute(
            """INSERT INTO event_batches (chain_id, first_id, last_id, min_block_time,
                                          max_block_time, row_count, created_at, processed_at)
               VALUES (1, 1, 1, now(), now(), 1, now() - interval '3 days', now() - interval '3 days'),
                      (1, 2, 2, now(), now(), 1, now() - interval '3 days', NULL)""")
        # Reorgs: corrected long ago (gone), uncorrected long ago (stays), corrected recently.
        await conn.execute(
            """INSERT INTO reorgs (chain_id, detected_at, depth, common_ancestor, old_head_hash,
                                   new_head_hash, events_invalidated, corrected_at)
               VALUES (1, $1, 1, 2000, '0xa', '0xb', 0, $1), (1, $1, 1, 2001, '0xa', '0xb', 0, NULL),
                      (1, $2, 1, 2002, '0xa', '0xb', 0, $2)""", old, recent)
        # Blocks: the window plus margin below the checkpoint stays, anything below it goes.
        keep_from = 1000 - 128 - BLOCKS_MARGIN + 1
        await conn.execute(
            """INSERT INTO blocks (chain_id, number, hash, parent_hash, time)
               SELECT 1, n, '0x', '0x', now() FROM generate_series($1::bigint, 1000) AS n""",
            keep_from - 50)

        policy = RetentionPolicy(events=None, event_batches=days(1), deliveries=days(30),
                                 reorgs=days(30))
        report = await RetentionRunner(policy).run(conn, now=now)
        assert report is not None and report.done
        assert report.deleted == {"events": 0, "event_batches": 1, "deliveries": 5, "reorgs": 1,
                                  "blocks": 50}
        assert {r["id"] for r in await conn.fetch("SELECT id FROM deliveries")} == kept
        assert not gone & {r["id"] for r in await conn.fetch("SELECT id FROM deliveries")}
        assert await conn.fetchval("SELECT count(*) FROM event_batches") == 3
        assert await conn.fetchval(
            "SELECT count(*) FROM event_batches WHERE processed_at IS NULL") == 1
        assert [r["common_ancestor"] for r in await conn.fetch(
            "SELECT common_ancestor FROM reorgs ORDER BY id")] == [2001, 2002]
        assert await conn.fetchval("SELECT min(number) FROM blocks") == keep_from
        assert await conn.fetchval("SELECT count(*) FROM events") == 6  # RETENTION_EVENTS=forever

        # A second pass finds nothing more; "forever" everywhere deletes nothing at all.
        again = await RetentionRunner(policy).run(conn, now=now)
        assert again is not None and sum(again.deleted.values()) == 0
    finally:
        await conn.close()

"""Scenario 5 — endpoints that fail (guarantees 3 and 7).

- An endpoint answering 503 for 20 s: the delivery is retried on the schedule with one
  ``webhook-id`` and is ``delivered`` once the endpoint recovers.
- An endpoint answering 400: ``failed`` after one attempt, with the status and reason kept.
- An endpoint answering 503 for ever: retried ``WEBHOOK_MAX_ATTEMPTS`` times, then ``failed``
  with the last error kept — nothing is dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.chain import TOKEN, TRANSFER
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    assert_all_verified,
    assert_no_duplicate_rows,
    wait_deliveries,
    wait_received,
)

SCHEDULE = (1.0, 2.0, 2.0)  # the last entry repeats
MAX_ATTEMPTS = 14  # 1 + 2 + 11 × 2 = 25 s of retries: longer than the 20 s outage
OUTAGE_SECONDS = 20.0


@pytest.mark.slow
def test_endpoint_outage_retried_then_delivered_and_rejection_failed(
        make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str) -> None:
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url,
                             WEBHOOK_RETRY_SCHEDULE=",".join(map(str, SCHEDULE)),
                             WEBHOOK_MAX_ATTEMPTS=str(MAX_ATTEMPTS))
    chain, store, receiver = pipeline.chain, pipeline.store, pipeline.receiver
    token = chain.token_a.address
    hooks = {path: store.add_hook(path, address=token, signature=TRANSFER,
                                  url=receiver.url(f"hooks/{path}"))
             for path in ("flaky", "rejecting", "down", "healthy")}
    receiver.script("hooks/flaky", 503, seconds=OUTAGE_SECONDS)
    receiver.script("hooks/rejecting", 400)
    receiver.script("hooks/down", 503)
    pipeline.start()
    chain.wait(chain.mint(chain.token_a, chain.accounts[1], 7 * TOKEN))
    (log,) = [entry for entry in chain.logs() if entry.name == "Transfer"
              and entry.address == token.lower()]

    def wanted(*paths: str) -> set[tuple[int, str, tuple[str, int]]]:
        return {(hooks[p].action_id, "matched", log.key) for p in paths}

    # The healthy endpoint is not held back by its failing neighbours.
    wait_deliveries(store, wanted("healthy"), timeout=20, supervisor=pipeline.services)
    wait_deliveries(store, wanted("rejecting"), status="failed", timeout=10,
                    supervisor=pipeline.services)
    rows = wait_deliveries(store, wanted("flaky"), timeout=OUTAGE_SECONDS + 25,
                           supervisor=pipeline.services)
    rows = wait_deliveries(store, wanted("down"), status="failed", timeout=40,
                           supervisor=pipeline.services)
    assert_no_duplicate_rows(rows)
    by_action = {row.action_id: row for row in rows}
    received = wait_received(receiver, {by_action[hooks["flaky"].action_id].webhook_id},
                             timeout=5, supervisor=pipeline.services)
    assert_all_verified(received)
    posts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in received:
        posts[record["path"]].append(record)

    flaky = by_action[hooks["flaky"].action_id]
    flaky_posts = posts["/hooks/flaky"]
    assert {p["webhook_id"] for p in flaky_posts} == {flaky.webhook_id}, "one webhook-id across retries"
    assert [p["status"] for p in flaky_posts][-1] == 200
    assert all(p["status"] == 503 for p in flaky_posts[:-1]) and len(flaky_posts) >= 3
    assert flaky.attempts == len(flaky_posts) and flaky.last_status_code == 200
    _assert_on_schedule(flaky_posts)

    rejecting = by_action[hooks["rejecting"].action_id]
    assert rejecting.attempts == 1 and len(posts["/hooks/rejecting"]) == 1
    assert rejecting.last_status_code == 400
    assert rejecting.last_error and "400" in rejecting.last_error, rejecting.describe()

    down = by_action[hooks["down"].action_id]
    assert down.attempts == MAX_ATTEMPTS == len(posts["/hooks/down"]), down.describe()
    assert down.last_status_code == 503 and down.last_error and "503" in down.last_error
    _assert_on_schedule(posts["/hooks/down"])

    healthy = by_action[hooks["healthy"].action_id]
    assert healthy.attempts == 1 and [p["status"] for p in posts["/hooks/healthy"]] == [200]


def _assert_on_schedule(attempts: list[dict[str, Any]]) -> None:
    """Retry n waits at least ``SCHEDULE[n-1]`` (the last entry repeating), never earlier."""
    times = [p["received_at"] for p in attempts]
    for n, (before, after) in enumerate(zip(times, times[1:], strict=False), start=1):
        minimum = SCHEDULE[min(n, len(SCHEDULE)) - 1]
        assert after - before >= minimum - 0.05, (
            f"retry {n} came {after - before:.2f}s after the previous attempt (schedule {minimum}s)")

"""Retries after a worker crash (guarantee 7's "retried on the schedule").

A worker is ``kill -9``-ed and started again (as a process supervisor or an orchestrator would);
then an endpoint answers 503 once. The retry is due 0.5 s later and must be attempted within
seconds — not after the dead worker's RQ scheduler lock expires, as it did until 221345b (this
test was the strict-xfail reproduction: "1 scheduled" for ~61 s, two workers registered, one of
them dead).
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from rq import Worker

from core.queue import delivery_queue
from tests.e2e.chain import TOKEN, TRANSFER
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import wait_deliveries, wait_received, wait_until


def _workers(redis_url: str) -> list[Worker]:
    client = redis.Redis.from_url(redis_url)
    try:
        return Worker.all(queue=delivery_queue(client))
    finally:
        client.close()


def test_retry_after_a_worker_crash_is_not_held_back(
        make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str) -> None:
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url)
    chain, store, receiver, services = (pipeline.chain, pipeline.store, pipeline.receiver,
                                        pipeline.services)
    hook = store.add_hook("transfers", address=chain.token_a.address, signature=TRANSFER,
                          url=receiver.url("hooks/transfers"))
    pipeline.start()
    chain.wait(chain.mint(chain.token_a, chain.accounts[1], TOKEN))
    rows = wait_deliveries(store, {(hook.action_id, "matched", log.key) for log in chain.logs()
                                   if log.name == "Transfer"}, timeout=30, supervisor=services)
    wait_received(receiver, {r.webhook_id for r in rows}, timeout=10, supervisor=services)

    services["workers"].kill()
    services["workers"].start()
    wait_until(lambda: (any(w.pid == services["workers"].pid for w in _workers(redis_url)),
                        "the restarted worker is not registered with RQ yet"),
               timeout=20, what="the restarted worker", supervisor=services)
    receiver.script("hooks/transfers", 503, seconds=1.0)  # the first attempt fails, a retry is due
    chain.wait(chain.mint(chain.token_a, chain.accounts[1], 2 * TOKEN))
    wanted = {(hook.action_id, "matched", log.key) for log in chain.logs()
              if log.name == "Transfer"}
    # First attempt + retry 0.5 s later (WEBHOOK_RETRY_SCHEDULE=0.5,…), with room for startup.
    wait_deliveries(store, wanted, timeout=12, supervisor=services)


def test_deliveries_of_a_worker_killed_mid_job_resume_within_seconds(
        make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str) -> None:
    """Minimal reproduction: the endpoint is slow, so the worker is mid-job (POST sent, outcome
    not committed) when it is ``kill -9``-ed and started again. The delivery must then be made
    within seconds (a repeated POST with the same ``webhook-id`` is allowed)."""
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url)
    chain, store, receiver, services = (pipeline.chain, pipeline.store, pipeline.receiver,
                                        pipeline.services)
    hook = store.add_hook("transfers", address=chain.token_a.address, signature=TRANSFER,
                          url=receiver.url("hooks/transfers"))
    pipeline.start()
    receiver.script("hooks/transfers", 200, seconds=4, delay=2.5)  # slow while we kill
    chain.wait(chain.mint(chain.token_a, chain.accounts[1], TOKEN))
    wait_until(lambda: (bool(receiver.received()), "no POST yet"), timeout=20,
               what="the worker to be mid-job", supervisor=services)
    services["workers"].kill()
    services["workers"].start()
    wanted = {(hook.action_id, "matched", log.key) for log in chain.logs()
              if log.name == "Transfer"}
    wait_deliveries(store, wanted, timeout=15, supervisor=services)

"""Per-endpoint isolation: a hanging endpoint delays nobody else (one worker process), an
endpoint failing again and again is paused by its circuit breaker — its deliveries wait without
using attempts and one probe per interval decides when it reopens."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from core.queue import ENDPOINT_STATE_KEY, REPLAY_QUEUE_NAME, enqueue_deliveries
from tests.support.receiver import Receiver, Step
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil
from tests.workers.process import WorkerProcess
from workers import metrics
from workers.endpoints import Circuit, Endpoint, endpoint_key


def _two_endpoints(db_url: str, *, hang_url: str, healthy_url: str, secret: str,
                   events: int) -> list[tuple[int, int]]:
    """One trigger with two webhook actions; per event a (hanging, healthy) delivery pair."""
    with rows.connect(db_url) as conn:
        trigger_id = rows.insert_trigger(conn)
        hang_action = rows.insert_action(conn, trigger_id, {"url": hang_url, "secret": secret})
        healthy_action = rows.insert_action(conn, trigger_id,
                                            {"url": healthy_url, "secret": secret})
        pairs = []
        for n in range(events):
            event_id = rows.transfer_event(conn, log_index=n)
            pairs.append((
                rows.insert_delivery(conn, action_id=hang_action, trigger_id=trigger_id,
                                     event_id=event_id),
                rows.insert_delivery(conn, action_id=healthy_action, trigger_id=trigger_id,
                                     event_id=event_id)))
        return pairs


@pytest.fixture
def hanging(secret: str) -> Iterator[Receiver]:
    with Receiver(secret=secret) as running:
        running.script(Step(status=200, hang=60, times=100_000))
        yield running


def test_a_hanging_endpoint_does_not_delay_a_healthy_one_in_the_same_worker(
        plain_db_url: str, redis_url: str, receiver: Receiver, hanging: Receiver,
        secret: str) -> None:
    pairs = _two_endpoints(plain_db_url, hang_url=hanging.url, healthy_url=receiver.url,
                           secret=secret, events=40)
    client = redis.Redis.from_url(redis_url)
    worker = WorkerProcess(db_url=plain_db_url, redis_url=redis_url,
                           env={"WEBHOOK_TIMEOUT": "5"})
    try:
        sent_at: dict[str, float] = {}
        for hang_id, healthy_id in pairs:  # 10 events a second, both deliveries in one job
            rows.enqueue(client, [hang_id, healthy_id])
            sent_at[f"dlv_{healthy_id}"] = time.time()
            time.sleep(0.1)
        try:
            seen = receiver.wait_for(len(pairs), timeout=15)
        except TimeoutError:
            with rows.connect(plain_db_url) as conn:
                print(conn.execute(
                    """SELECT id, status, attempts, last_error, leased_by, lease_expires_at,
                              next_attempt_at FROM deliveries WHERE id = ANY(%s)""",
                    ([healthy for _, healthy in pairs],)).fetchall())
            print(worker.output[-5000:])
            raise
        delays = sorted(r.received_at - sent_at[str(r.webhook_id)] for r in seen)
        # Alone, each arrives within milliseconds; behind a 5 s timeout it would take minutes.
        assert delays[-1] < 2.0, delays
        assert hanging.count() >= 1
    finally:
        worker.close()
        client.close()


def test_consecutive_failures_open_the_circuit_and_one_probe_per_interval_reopens_it(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, worker_endpoint_concurrency=1, worker_circuit_failures=2,
                    worker_circuit_probe_interval=1.0, webhook_max_attempts=10,
                    webhook_retry_schedule="0.2")
    receiver.script(Step(status=503, times=5))  # then 200
    ids = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret, count=10)
    rows.enqueue(redis_client, ids)
    opened_seen: list[dict[str, Any]] = []

    def all_delivered() -> bool:
        state = redis_client.hget(ENDPOINT_STATE_KEY, endpoint_key(receiver.url))
        if state is not None:
            opened_seen.append(json.loads(state))
        return all(rows.delivery(plain_db_url, i)["status"] == "delivered" for i in ids)

    work_until(all_delivered, timeout=30)
    seen = receiver.received()
    failing = [r.received_at for r in seen if r.answered == 503]
    assert len(failing) == 5
    # Two failures in a row open it; from then on one probe per interval, not a retry storm.
    gaps = [b - a for a, b in zip(failing[1:], failing[2:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    # Waiting while paused used no attempts: every attempt is a request the endpoint saw.
    assert sum(rows.delivery(plain_db_url, i)["attempts"] for i in ids) == len(seen)
    assert opened_seen and opened_seen[0]["circuit"] in ("open", "probing")
    assert redis_client.hget(ENDPOINT_STATE_KEY, endpoint_key(receiver.url)) is None
    key = endpoint_key(receiver.url)
    assert metrics.ENDPOINT_CIRCUIT_OPEN.labels(key)._value.get() == 0


def test_circuit_state_machine() -> None:
    endpoint = Endpoint(key="h:443", cap=2, failures_to_open=3, probe_interval=10.0)
    assert endpoint.capacity(0.0) == 4  # twice the cap may be leased
    assert not endpoint.record(answered=False, now=1.0)
    assert not endpoint.record(answered=False, now=1.0)
    assert endpoint.record(answered=False, now=2.0) and endpoint.circuit is Circuit.OPEN
    assert not endpoint.may_send() and endpoint.capacity(5.0) == 0
    assert endpoint.capacity(12.0) == 1  # one probe once the interval has passed
    endpoint.leased_now(1)
    assert endpoint.circuit is Circuit.PROBING and endpoint.capacity(12.0) == 0
    assert endpoint.record(answered=False, now=13.0) and endpoint.circuit is Circuit.OPEN
    assert endpoint.capacity(20.0) == 0 and endpoint.capacity(23.5) == 0  # leased probe
    endpoint.leased = 0
    assert endpoint.capacity(23.5) == 1
    endpoint.leased_now(1)
    endpoint.probe_skipped()  # the probe was cancelled before sending: probe again at once
    assert endpoint.circuit is Circuit.OPEN
    endpoint.leased = 0
    endpoint.leased_now(1)
    assert endpoint.record(answered=True, now=24.0) and endpoint.circuit is Circuit.CLOSED
    assert endpoint.consecutive_failures == 0
    disabled = Endpoint(key="h:443", cap=1, failures_to_open=0, probe_interval=1.0)
    for _ in range(10):
        disabled.record(answered=False, now=0.0)
    assert disabled.circuit is Circuit.CLOSED


def test_endpoint_key_is_host_and_port() -> None:
    assert endpoint_key("https://Example.com/hook?x=1") == "example.com:443"
    assert endpoint_key("http://127.0.0.1:8080/a") == "127.0.0.1:8080"
    assert endpoint_key("not a url") == "?"
    assert endpoint_key(None) == "?"


@dataclass
class _RefireThenLive:
    slow: Receiver  # the refire's endpoint: answers each request after ``hang`` seconds
    worker: WorkerProcess
    history: list[int]
    live: int
    live_queued_at: float


@contextmanager
def _refire_then_live(db_url: str, redis_url: str, *, secret: str, live_url: str | None,
                      count: int, hang: float) -> Iterator[_RefireThenLive]:
    """``count`` refire deliveries (``replay``) to a slow endpoint, enqueued as history on one
    ``python -m workers``; once the first arrives, one live delivery to ``live_url`` (the slow
    endpoint itself when ``None``) is enqueued."""
    with Receiver(secret=secret) as slow:
        slow.script(Step(status=200, hang=hang, times=100_000))
        with rows.connect(db_url) as conn:
            trigger_id = rows.insert_trigger(conn)
            refired = rows.insert_action(conn, trigger_id, {"url": slow.url, "secret": secret})
            watched = refired if live_url is None else rows.insert_action(
                conn, trigger_id, {"url": live_url, "secret": secret})
            history = [rows.insert_delivery(conn, action_id=refired, trigger_id=trigger_id,
                                            event_id=rows.transfer_event(conn, log_index=n),
                                            replay=True)
                       for n in range(count)]
            live = rows.insert_delivery(conn, action_id=watched, trigger_id=trigger_id,
                                        event_id=rows.transfer_event(conn, log_index=count))
        client = redis.Redis.from_url(redis_url)
        worker = WorkerProcess(db_url=db_url, redis_url=redis_url)
        try:
            enqueue_deliveries(client, history, queue_name=REPLAY_QUEUE_NAME)
            slow.wait_for(1, timeout=30)  # the worker is on the history job now
            queued_at = time.time()
            rows.enqueue(client, [live])
            yield _RefireThenLive(slow, worker, history, live, queued_at)
            slow.wait_for(count + (live_url is None), timeout=30)
        finally:
            worker.close()
            client.close()


def test_a_refires_history_job_lets_a_live_webhook_through_at_once(
        plain_db_url: str, redis_url: str, receiver: Receiver, secret: str) -> None:
    """A history job (``scripts/replay.py --refire``) holds its worker until its chunk is sent,
    so that a refire does not pile up in one process; but a live job queued meanwhile is taken
    at once, while the chunk goes on being sent in the background."""
    # 50 deliveries, 10 at a time (the endpoint cap), 0.5 s each: ~2.5 s of history.
    with _refire_then_live(plain_db_url, redis_url, secret=secret, live_url=receiver.url,
                           count=50, hang=0.5) as run:
        [seen] = receiver.wait_for(1, timeout=30)
        assert seen.received_at - run.live_queued_at < 1.0, run.worker.output[-3000:]
        assert run.slow.count() < 50  # the history chunk was still being sent


def test_a_live_webhook_goes_before_a_refires_history_to_the_same_endpoint(
        plain_db_url: str, redis_url: str, secret: str) -> None:
    """A refire's deliveries (``replay``) parked or leased for an endpoint do not hold up a live
    delivery to that same endpoint: it is claimed and sent before the history still waiting."""
    # 100 deliveries, 10 at a time (the endpoint cap), 0.25 s each: ~2.5 s of history; 20 are
    # leased at a time, the other 80 parked.
    with _refire_then_live(plain_db_url, redis_url, secret=secret, live_url=None, count=100,
                           hang=0.25) as run:
        deadline = time.monotonic() + 30
        while True:
            seen = {r.webhook_id: r for r in run.slow.received()}
            if f"dlv_{run.live}" in seen or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        arrived = seen[f"dlv_{run.live}"]
        before = sum(1 for r in seen.values() if r.received_at < arrived.received_at)
        # Behind the history it would come after ~80 others (~2 s): two rounds of the cap at
        # most (the requests in flight, then the claim it joins).
        assert arrived.received_at - run.live_queued_at < 1.0, run.worker.output[-3000:]
        assert before < 40, before


def test_endpoint_waiting_lists_give_live_deliveries_first() -> None:
    endpoint = Endpoint(key="h:1", cap=2, failures_to_open=5, probe_interval=30.0)
    assert endpoint.wait([1, 2, 3], limit=5, history=True) == 0
    assert endpoint.wait([4, 5], limit=5) == 0
    assert endpoint.wait([6], limit=5) == 1  # the limit counts both lists
    assert endpoint.wait([4], limit=10, history=True) == 0  # already waiting: once only
    assert endpoint.parked == 5
    assert endpoint.take_waiting(3) == ([4, 5], [1])
    assert endpoint.take_waiting(10) == ([], [2, 3])
    assert endpoint.parked == 0

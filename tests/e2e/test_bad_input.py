"""Scenario 8 — bad input everywhere, each error in its place, and the pipeline keeps delivering.

- Malformed triggers inserted with SQL (an unparseable signature, an unknown condition operator, an
  ``ftp://`` webhook URL), some before the processor starts and some while it runs: each gets its
  reason in ``triggers.error`` and never produces a delivery.
- The indexer reads the chain through a real misbehaving JSON-RPC proxy that answers garbage
  instead of JSON and real answers with wrong-typed fields: ingest logs each fault, retries, never
  writes bad data, and ends with every log stored exactly once.
- A webhook URL whose host name resolves to a loopback address, with workers running without
  ``WEBHOOK_ALLOW_PRIVATE``: the delivery is ``failed`` with the reason in
  ``deliveries.last_error`` and nothing reaches the target.

Every public test target here is 127.0.0.1, which the SSRF guard rightly refuses too, so the
guarded worker runs in a first phase; the second phase (workers configured for local targets, as
in every other scenario) shows the valid triggers delivering everything while the proxy keeps
misbehaving and the malformed triggers stay where they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core.abi import parse_event_signature
from core.errors import InvalidTrigger
from processor.conditions import compile_conditions
from tests.e2e.chain import TOKEN, TRANSFER
from tests.e2e.conftest import Pipeline
from tests.e2e.pipeline import (
    assert_all_verified,
    assert_no_duplicate_rows,
    assert_stored_exactly_once,
    wait_deliveries,
    wait_ingested,
    wait_received,
    wait_until,
)
from tests.support.anvil import Anvil
from tests.support.rpc_proxy import Fault, RpcProxy

MALFORMED: dict[str, dict[str, Any]] = {
    "bad-signature": {"signature": "Transfer(address indexed from, address indexed to, uint999 value)"},
    "bad-operator": {"signature": TRANSFER,
                     "conditions": {"field": "value", "op": "between", "value": "1"}},
    "bad-url": {"signature": TRANSFER, "url": "ftp://example.com/hook", "expect": "ftp"},
}
LATE_MALFORMED: dict[str, dict[str, Any]] = {
    "late-bad-signature": {"signature": "Transfer(address indexed from, address indexed to"},
    "late-unknown-field": {"signature": TRANSFER,
                           "conditions": {"all": [{"field": "amount", "op": "gt", "value": 1}]}},
    "late-bad-number": {"signature": TRANSFER,
                        "conditions": {"field": "value", "op": "gte", "value": "12abc"}},
}


def _expected_error(spec: dict[str, Any]) -> str:
    """The reason the shared parser/compiler gives; ``triggers.error`` must carry it."""
    if "expect" in spec:
        return str(spec["expect"])
    try:
        signature = parse_event_signature(spec["signature"])
        compile_conditions(spec["conditions"], signature)
    except InvalidTrigger as error:
        return str(error)
    raise AssertionError(f"{spec} is not malformed")


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[RpcProxy]:
    server = RpcProxy(anvil.url)
    try:
        yield server
    finally:
        server.close()


def _script_faults(proxy: RpcProxy) -> None:
    proxy.fail("eth_getLogs", Fault.garbage(), times=2, after=1)
    proxy.fail("eth_getLogs", Fault.wrong_type(), times=2, after=4)
    proxy.fail("eth_getBlockByNumber", Fault.wrong_type(), times=2, after=2)
    proxy.fail("eth_blockNumber", Fault.garbage(), times=2, after=3)


@pytest.mark.slow
def test_bad_input_is_reported_in_place_and_the_rest_keeps_delivering(
        make_pipeline: Callable[..., Pipeline], plain_db_url: str, redis_url: str,
        proxy: RpcProxy) -> None:
    pipeline = make_pipeline(database_url=plain_db_url, redis_url=redis_url, RPC_URL=proxy.url)
    chain, store, receiver, services = (pipeline.chain, pipeline.store, pipeline.receiver,
                                        pipeline.services)
    token = chain.token_a.address

    def add_malformed(specs: dict[str, dict[str, Any]]) -> None:
        for name, spec in specs.items():
            store.add_hook(name, address=token, signature=spec["signature"],
                           conditions=spec.get("conditions"),
                           url=spec.get("url", receiver.url(f"hooks/{name}")))

    add_malformed(MALFORMED)
    # Resolves to 127.0.0.1: refused by a worker without WEBHOOK_ALLOW_PRIVATE.
    private = store.add_hook("private-target", address=token, signature=TRANSFER,
                             url=f"http://localhost:{receiver.port}/hooks/private")
    _script_faults(proxy)
    services.add("ingest", "ingest")
    services.add("processor", "processor")
    services.add("workers-guarded", "workers", env={"WEBHOOK_ALLOW_PRIVATE": "false"})
    add_malformed(LATE_MALFORMED)  # picked up without a restart
    for n in range(1, 4):
        chain.wait(chain.mint(chain.token_a, chain.accounts[1], n * TOKEN))
    phase_one = [log for log in chain.logs() if log.name == "Transfer"]

    expected_errors = {name: _expected_error(spec)
                       for name, spec in {**MALFORMED, **LATE_MALFORMED}.items()}

    def errors_recorded() -> tuple[bool, str]:
        errors = store.trigger_errors()
        wrong = {name: errors.get(name) for name, needle in expected_errors.items()
                 if needle.lower() not in (errors.get(name) or "").lower()}
        return not wrong, f"triggers.error not (yet) naming the problem: {wrong}"

    wait_until(errors_recorded, timeout=20, what="malformed triggers to get their error",
               supervisor=services)
    private_rows = wait_deliveries(store, {(private.action_id, "matched", log.key) for log in phase_one},
                                   status="failed", timeout=30, supervisor=services)
    for row in private_rows:
        if row.action_id == private.action_id:
            assert row.last_error and "loopback" in row.last_error.lower(), row.describe()
            assert "WEBHOOK_ALLOW_PRIVATE" in row.last_error, row.describe()
    assert not [r for r in receiver.received() if r["path"] == "/hooks/private"], \
        "the SSRF guard let a POST through to a loopback target"
    services.assert_running()

    # Phase two: workers for local targets; the private trigger is switched off by its owner.
    assert services["workers-guarded"].terminate() == 0
    store.execute("UPDATE triggers SET enabled = false WHERE id = %s", private.trigger_id)
    good = store.add_hook("good-transfers", address=token, signature=TRANSFER,
                          conditions={"field": "value", "op": "gte", "value": str(TOKEN)},
                          url=receiver.url("hooks/good"))
    services.add("workers", "workers")
    _script_faults(proxy)
    start = chain.head() + 1
    for n in range(1, 6):
        chain.wait(chain.mint(chain.token_a, chain.accounts[2], n * TOKEN // 2))
    head = chain.head()
    logs = chain.logs(0, head)
    wait_ingested(store, logs, head=head, timeout=30, supervisor=services)
    assert_stored_exactly_once(store, logs)
    wanted = {(good.action_id, "matched", log.key) for log in logs
              if log.block_number >= start and log.name == "Transfer" and log.args["value"] >= TOKEN}
    assert len(wanted) == 4
    rows = wait_deliveries(store, wanted, timeout=30, supervisor=services)
    assert_no_duplicate_rows(rows)
    malformed_ids = {r["id"] for r in store.rows("SELECT id FROM triggers WHERE error IS NOT NULL")}
    assert len(malformed_ids) == len(expected_errors)
    assert not [r for r in rows if r.trigger_id in malformed_ids], "a malformed trigger fired"
    assert {(r.action_id, r.kind, r.event_key) for r in rows if r.action_id == good.action_id} == wanted
    received = wait_received(receiver, {r.webhook_id for r in rows if r.action_id == good.action_id},
                             timeout=10, supervisor=services)
    assert_all_verified(received)
    assert {r["path"] for r in received} == {"/hooks/good"}
    assert errors_recorded()[0], "a trigger error was cleared while still malformed"

    # Ingest saw every scripted fault, said so, and retried.
    served = dict(proxy.faults_served)
    assert served.get("eth_getLogs:garbage", 0) >= 2 and served.get("eth_getLogs:wrong_type", 0) >= 2, served
    # Each failed attempt is one log line; a header fault served in the same attempt as a logs
    # fault (ingest fetches both concurrently) shares that attempt's line.
    attempts = sum(n for kind, n in served.items() if not kind.startswith("eth_getBlockByNumber"))

    def faults_logged() -> tuple[bool, str]:
        text = services["ingest"].log_text()
        reasons = {"garbage": "not JSON" in text, "wrong type": "malformed" in text}
        lines = text.count("rpc fault, retrying")
        return (all(reasons.values()) and lines >= attempts,
                f"{lines} 'rpc fault, retrying' lines for {served}; reasons seen {reasons}")

    wait_until(faults_logged, timeout=10, what="ingest to log its RPC faults", supervisor=services)
    assert services["ingest"].starts == 1

"""Payloads (docs/reference.md, Webhooks) and signatures, checked by a real Standard Webhooks verifier."""

from __future__ import annotations

from typing import Any

import redis
from eth_abi import encode as abi_encode

from core.abi import parse_event_signature
from tests.support import contracts
from tests.support.anvil import Anvil
from tests.support.receiver import Receiver
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil, status_is


def _deliver_one(db_url: str, redis_client: redis.Redis, work_until: WorkUntil,
                 delivery_id: int, receiver: Receiver) -> dict[str, Any]:
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(db_url, delivery_id, "delivered", "failed"))
    [seen] = receiver.received()
    assert seen.verified is True, seen.error
    assert seen.payload is not None
    return seen.payload


def test_erc20_transfer_from_anvil_is_signed_and_typed_per_spec(
        db_url: str, redis_client: redis.Redis, anvil: Anvil, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    w3 = contracts.web3_for(anvil.url)
    token = contracts.deploy_erc20(w3)
    holder = w3.eth.accounts[1]
    receipt = contracts.transact(w3, token.functions.mint(holder, 1234 * 10**18))
    [log] = [entry for entry in receipt["logs"] if entry["topics"][0].hex().endswith(
        rows.TRANSFER_TOPIC0[2:])]
    topics = ["0x" + bytes(topic).hex() for topic in log["topics"]]
    install_runtime(db_url)
    with rows.connect(db_url) as conn:
        event_id = rows.insert_event(
            conn, topics=topics, data="0x" + bytes(log["data"]).hex(),
            address=token.address, block_number=receipt["blockNumber"],
            block_hash="0x" + bytes(receipt["blockHash"]).hex(),
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(), log_index=log["logIndex"])
        trigger_id = rows.insert_trigger(conn, name="whale-transfers")
        action_id = rows.insert_action(conn, trigger_id, {"url": receiver.url, "secret": secret})
        delivery_id = rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                           event_id=event_id)

    payload = _deliver_one(db_url, redis_client, work_until, delivery_id, receiver)

    assert payload == {
        "type": "event.matched",
        "delivery_id": delivery_id,
        "trigger": {"id": trigger_id, "name": "whale-transfers"},
        "event": {
            "chain_id": 31337, "block_number": receipt["blockNumber"],
            "block_hash": "0x" + bytes(receipt["blockHash"]).hex(),
            "block_time": "2026-11-22T12:00:00Z",
            "tx_hash": "0x" + bytes(receipt["transactionHash"]).hex(),
            "tx_index": 0, "log_index": log["logIndex"], "address": token.address.lower(),
            "name": "Transfer", "signature": "Transfer(address,address,uint256)",
            "args": {"from": "0x" + "00" * 20, "to": holder.lower(),
                     "value": str(1234 * 10**18)},
        },
    }
    [seen] = receiver.received()
    assert seen.webhook_id == f"dlv_{delivery_id}"
    assert seen.headers["Content-Type"] == "application/json"
    row = rows.delivery(db_url, delivery_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 200)
    assert row["delivered_at"] is not None and row["latency_ms"] > 0


ORDER = ("Order(address indexed maker, (uint256 amount, address token, bool live) leg, "
         "uint256[] ids, bytes32 tag, string note, int8 delta)")


def test_tuple_and_array_arguments(db_url: str, redis_client: redis.Redis, receiver: Receiver,
                                   secret: str, install_runtime: RuntimeFactory,
                                   work_until: WorkUntil) -> None:
    signature = parse_event_signature(ORDER)
    maker = "0x" + "ab" * 20
    token = "0x" + "cd" * 20
    data = abi_encode(["(uint256,address,bool)", "uint256[]", "bytes32", "string", "int8"],
                      [(2**255, token, True), [1, 2, 3], b"\x01" * 32, "hi", -5])
    install_runtime(db_url)
    with rows.connect(db_url) as conn:
        event_id = rows.insert_event(conn, topics=[signature.topic0, "0x" + "00" * 12 + "ab" * 20],
                                     data="0x" + data.hex())
        trigger_id = rows.insert_trigger(conn, name="orders", signature=ORDER)
        action_id = rows.insert_action(conn, trigger_id, {"url": receiver.url, "secret": secret})
        delivery_id = rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                           event_id=event_id, replay=True)

    payload = _deliver_one(db_url, redis_client, work_until, delivery_id, receiver)

    assert payload["replay"] is True
    assert payload["event"]["signature"] == \
        "Order(address,(uint256,address,bool),uint256[],bytes32,string,int8)"
    assert payload["event"]["args"] == {
        "maker": maker,
        "leg": {"amount": str(2**255), "token": token, "live": True},
        "ids": ["1", "2", "3"],
        "tag": "0x" + "01" * 32,
        "note": "hi",
        "delta": "-5",
    }


def test_removed_delivery_is_sent_as_event_removed(
        db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(db_url)
    with rows.connect(db_url) as conn:
        event_id = rows.transfer_event(conn, invalidated=True)
        trigger_id = rows.insert_trigger(conn)
        action_id = rows.insert_action(conn, trigger_id, {"url": receiver.url, "secret": secret})
        rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id, event_id=event_id,
                             status="delivered")
        removed_id = rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                          event_id=event_id, kind="removed")

    payload = _deliver_one(db_url, redis_client, work_until, removed_id, receiver)

    assert payload["type"] == "event.removed"
    assert payload["delivery_id"] == removed_id
    assert payload["event"]["args"]["value"] == str(10**21)
    assert "replay" not in payload
    assert receiver.received()[0].webhook_id == f"dlv_{removed_id}"


def test_action_headers_are_added_but_cannot_override_signature_headers(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver, secret: str,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url, secret=secret,
                                       extra_config={"headers": {
                                           "X-Tenant": "acme", "WEBHOOK-ID": "forged",
                                           "Webhook-Signature": "v1,forged",
                                           "Content-Type": "text/plain"}})
    _deliver_one(plain_db_url, redis_client, work_until, delivery_id, receiver)
    [seen] = receiver.received()
    assert seen.headers["X-Tenant"] == "acme"
    assert seen.webhook_id == f"dlv_{delivery_id}"
    assert "forged" not in seen.signature
    assert seen.headers["Content-Type"] == "application/json"


def test_action_without_secret_is_sent_unsigned(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url)
    [delivery_id] = rows.webhook_setup(plain_db_url, hook_url=receiver.url)
    rows.enqueue(redis_client, [delivery_id])
    work_until(status_is(plain_db_url, delivery_id, "delivered"))
    [seen] = receiver.received()
    assert seen.verified is False  # the receiver requires a signature; none was sent
    assert seen.signature is None
    assert seen.webhook_id == f"dlv_{delivery_id}" and seen.timestamp is not None

"""The harness itself must be trustworthy: a receiver that accepted bad signatures, or a chain
oracle that miscounted, would make every scenario pass for the wrong reason."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from tests.e2e.chain import TOKEN, Chain
from tests.e2e.pipeline import SECRET
from tests.e2e.receiver import Receiver


def _post(receiver: Receiver, path: str, *, secret: str, msg_id: str) -> int:
    body = '{"type": "event.matched"}'
    now = datetime.now(UTC)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign(msg_id, now, body),
               "content-type": "application/json"}
    return httpx.post(receiver.url(path), content=body, headers=headers, timeout=5).status_code


def test_receiver_verifies_signatures_and_follows_its_script(receiver: Receiver) -> None:
    assert _post(receiver, "hooks/a", secret=SECRET, msg_id="dlv_1") == 200
    assert _post(receiver, "hooks/a", secret="whsec_" + "A" * 32, msg_id="dlv_2") == 401
    receiver.script("hooks/a", 503, seconds=0.5)
    receiver.script("hooks/b", 400)
    assert _post(receiver, "hooks/a", secret=SECRET, msg_id="dlv_3") == 503
    assert _post(receiver, "hooks/b", secret=SECRET, msg_id="dlv_4") == 400
    time.sleep(0.6)
    assert _post(receiver, "hooks/a", secret=SECRET, msg_id="dlv_3") == 200
    records = [(r["webhook_id"], r["verified"], r["status"]) for r in receiver.received()]
    assert records == [("dlv_1", True, 200), ("dlv_2", False, 401), ("dlv_3", True, 503),
                       ("dlv_4", True, 400), ("dlv_3", True, 200)]


def test_chain_oracle_sees_every_uniswap_event(chain: Chain) -> None:
    start = chain.head() + 1
    chain.add_liquidity(100 * TOKEN, 400 * TOKEN)
    chain.swap(TOKEN, zero_for_one=True)
    logs = chain.logs(start)
    # add_liquidity: 2 mints + 2 transfers in + LP (MINIMUM_LIQUIDITY + provider) + Sync + Mint;
    # swap: mint + transfer in + transfer out + Sync + Swap.
    assert [log.name for log in logs].count("Transfer") == 6 + 3
    assert [log.name for log in logs if log.name != "Transfer"] == ["Sync", "Mint", "Sync", "Swap"]
    reserves = chain.pair.functions.getReserves().call()
    assert chain.reserves == (reserves[0], reserves[1])
    swap = logs[-1]
    assert swap.args["amount0In"] == TOKEN and swap.json_args()["amount0In"] == str(TOKEN)
    assert swap.json_args()["to"] == chain.deployer.lower()

"""The SSRF guard: internal targets refused without WEBHOOK_ALLOW_PRIVATE, allowed with it;
every IANA special-purpose block refused by address; cloud metadata refused in every form, even
with WEBHOOK_ALLOW_PRIVATE."""

from __future__ import annotations

import ipaddress

import pytest
import redis

from tests.support.receiver import Receiver
from tests.workers import rows
from tests.workers.conftest import RuntimeFactory, WorkUntil
from workers.ssrf import (
    IPV4_SPECIAL,
    IPV6_SPECIAL,
    METADATA_ADDRESSES,
    GuardedResolver,
    TargetForbidden,
    check_url,
    refusal_reason,
)

GUARD = "SSRF guard refused the target"


def _targets(port: int) -> dict[str, str]:
    return {
        "loopback": f"http://127.0.0.1:{port}/hook",
        "private": f"http://10.0.0.1:{port}/hook",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "ipv6 loopback": f"http://[::1]:{port}/hook",
        "ipv4-mapped loopback": f"http://[::ffff:127.0.0.1]:{port}/hook",
        "name resolving to loopback": f"http://localhost:{port}/hook",
        "ipv6 metadata": "http://[fd00:ec2::254]/",
        "cgnat": f"http://100.64.0.1:{port}/hook",
        "unspecified": f"http://0.0.0.0:{port}/hook",
    }


def _setup(db_url: str, targets: dict[str, str]) -> dict[str, int]:
    ids = {}
    with rows.connect(db_url) as conn:
        event_id = rows.transfer_event(conn)
        for n, (name, url) in enumerate(targets.items()):
            trigger_id = rows.insert_trigger(conn, name=f"t{n}")
            action_id = rows.insert_action(conn, trigger_id, {"url": url, "timeout": 0.5})
            ids[name] = rows.insert_delivery(conn, action_id=action_id, trigger_id=trigger_id,
                                             event_id=event_id)
    return ids


def test_internal_targets_are_refused_without_allow_private(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_allow_private=False)
    ids = _setup(plain_db_url, {**_targets(receiver.port),
                                "ftp scheme": "ftp://example.com/hook",
                                "file scheme": "file:///etc/passwd"})
    rows.enqueue(redis_client, list(ids.values()))
    work_until(lambda: all(rows.delivery(plain_db_url, i)["status"] == "failed"
                           for i in ids.values()), timeout=20)
    for name, delivery_id in ids.items():
        row = rows.delivery(plain_db_url, delivery_id)
        assert row["attempts"] == 1, name
        assert row["last_error"].startswith(GUARD), (name, row["last_error"])
    assert receiver.received() == []
    errors = {name: rows.delivery(plain_db_url, i)["last_error"] for name, i in ids.items()}
    assert "host localhost resolves to" in errors["name resolving to loopback"]
    assert "cloud metadata" in errors["metadata"]
    assert "scheme 'ftp'" in errors["ftp scheme"]


# Cloud metadata in every spelling a URL can carry: literals, IPv6 forms embedding it, and
# numeric host names the system resolver turns into it (decimal, hex, octal, short forms).
METADATA_TARGETS = {
    "aws/gcp/azure": "http://169.254.169.254/latest/meta-data/",
    "aws ipv6": "http://[fd00:ec2::254]/latest/meta-data/",
    "aws ipv6 long form": "http://[fd00:0ec2:0:0:0:0:0:254]/",
    "alibaba": "http://100.100.100.200/latest/meta-data/",
    "ecs credentials": "http://169.254.170.2/v2/credentials",
    "ipv4-mapped": "http://[::ffff:169.254.169.254]/",
    "ipv4-mapped hex": "http://[::ffff:a9fe:a9fe]/",
    "nat64": "http://[64:ff9b::169.254.169.254]/",
    "6to4": "http://[2002:a9fe:a9fe::1]/",
    "ipv4-compatible": "http://[::169.254.169.254]/",
    "decimal": "http://2852039166/",
    "hex": "http://0xa9fea9fe/",
    "dotted hex": "http://0xa9.0xfe.0xa9.0xfe/",
    "dotted octal": "http://0251.0376.0251.0376/",
    "short form": "http://169.254.43518/",
    "alibaba decimal": "http://1684301000/",
}


def test_metadata_is_refused_in_every_form_even_with_allow_private(
        plain_db_url: str, redis_client: redis.Redis, install_runtime: RuntimeFactory,
        work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_allow_private=True)
    ids = _setup(plain_db_url, METADATA_TARGETS)
    rows.enqueue(redis_client, list(ids.values()))
    work_until(lambda: all(rows.delivery(plain_db_url, i)["status"] == "failed"
                           for i in ids.values()), timeout=20)
    for name, delivery_id in ids.items():
        row = rows.delivery(plain_db_url, delivery_id)
        assert row["last_error"].startswith(GUARD), (name, row["last_error"])
        assert "metadata" in row["last_error"] and "not even with" in row["last_error"], name
        assert row["last_status_code"] is None, name  # nothing was sent


def test_internal_targets_are_allowed_with_allow_private(
        plain_db_url: str, redis_client: redis.Redis, receiver: Receiver,
        install_runtime: RuntimeFactory, work_until: WorkUntil) -> None:
    install_runtime(plain_db_url, webhook_allow_private=True, webhook_max_attempts=10)
    ids = _setup(plain_db_url, {name: url for name, url in _targets(receiver.port).items()
                                if "metadata" not in name})
    rows.enqueue(redis_client, list(ids.values()))
    work_until(lambda: all(rows.delivery(plain_db_url, i)["attempts"] >= 1
                           for i in ids.values()), timeout=20)
    for name, delivery_id in ids.items():
        row = rows.delivery(plain_db_url, delivery_id)
        # Unroutable ones may time out or fail to connect, and whatever answers on this
        # network may refuse us over HTTP (the sandbox answers 169.254.169.254 with 403); none
        # is refused by the guard.
        assert row["status"] in ("delivered", "queued") or row["last_status_code"], (name, row)
        assert GUARD not in (row["last_error"] or ""), (name, row["last_error"])
    for reachable in ("loopback", "name resolving to loopback"):
        assert rows.delivery(plain_db_url, ids[reachable])["status"] == "delivered", reachable
    assert {r.webhook_id for r in receiver.received()} >= {
        f"dlv_{ids['loopback']}", f"dlv_{ids['name resolving to loopback']}"}


@pytest.mark.parametrize(("address", "refused"), [
    ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("::ffff:8.8.8.8", False),
    ("2001:4860:4860::8888", False), ("64:ff9b::8.8.8.8", False), ("2002:808:808::1", False),
    ("::8.8.8.8", False),
    ("127.0.0.1", True), ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True),
    ("169.254.169.254", True), ("169.254.1.1", True), ("100.64.0.1", True), ("0.0.0.0", True),
    ("224.0.0.1", True), ("240.0.0.1", True), ("255.255.255.255", True), ("::1", True),
    ("::", True), ("fe80::1", True), ("fc00::1", True), ("fd00:ec2::254", True),
    ("ff02::1", True), ("::ffff:127.0.0.1", True), ("::ffff:10.0.0.1", True),
    ("::127.0.0.1", True), ("2002:7f00:1::", True), ("64:ff9b::a9fe:a9fe", True),
    ("2001:db8::1", True),
    # Public to Python's ``is_global`` but refused: deprecated site-local, and registry
    # entries marked globally reachable or added after the ipaddress tables were written.
    ("fec0::1", True), ("feff::1", True), ("3fff::1", True), ("5f00::1", True),
    ("64:ff9b:1::1", True), ("2620:4f:8000::1", True), ("2001:20::1", True),
    ("2001:1::1", True), ("100:0:0:1::1", True), ("192.88.99.1", True), ("192.0.0.9", True),
    ("192.31.196.1", True), ("192.52.193.1", True), ("192.175.48.1", True),
    ("4000::1", True), ("e000::1", True),
    # Teredo: judged by the client's IPv4 address (here 192.0.2.45, documentation).
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
    ("100.100.100.200", True), ("::ffff:100.100.100.200", True),
])
def test_address_rules(address: str, refused: bool) -> None:
    assert (refusal_reason(ipaddress.ip_address(address)) is not None) is refused


def test_every_address_of_every_registry_block_is_refused() -> None:
    """First, last and a middle address of each IANA special-purpose block, both registries
    (forms that embed a public IPv4 address excepted: they are judged by it)."""
    embedding = {"::ffff:0:0/96", "64:ff9b::/96", "2002::/16"}
    for block, name in (*IPV4_SPECIAL, *IPV6_SPECIAL):
        if str(block) in embedding:
            continue
        for address in {block[0], block[-1], block[block.num_addresses // 2]}:
            assert refusal_reason(address) is not None, (name, address)


@pytest.mark.parametrize("url", sorted(METADATA_TARGETS.values()))
async def test_metadata_forms_are_refused_by_url_and_resolver(url: str) -> None:
    """Each form at both places the guard runs: ``check_url`` before the attempt (literal and
    numeric hosts), and for names the resolver aiohttp calls before connecting."""
    from yarl import URL

    with pytest.raises(TargetForbidden, match="metadata"):
        check_url(url, allow_private=True)
    host = URL(url).raw_host or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        resolver = GuardedResolver(allow_private=True)
        try:
            with pytest.raises(TargetForbidden, match="metadata"):
                await resolver.resolve(host, 80)
        finally:
            await resolver.close()
    assert {ipaddress.ip_address("169.254.169.254"),
            ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")} <= METADATA_ADDRESSES

"""The SSRF guard: webhook targets must be public http(s) addresses.

A target is refused when its scheme is not http/https, or when any address its host resolves to
is not a public unicast address:

- IPv4: every block of the IANA IPv4 Special-Purpose Address Registry — including the ones
  marked globally reachable (AS112, AMT, PCP/TURN anycast: never a webhook endpoint) — and
  multicast;
- IPv6: every block of the IANA IPv6 Special-Purpose Address Registry, and everything outside
  2000::/3, the only space allocated as global unicast (so the deprecated site-local
  fec0::/10, multicast and reserved space are refused, whatever :mod:`ipaddress` says of them);
- IPv6 forms that carry an IPv4 address a stack may route as IPv4 (IPv4-mapped,
  IPv4-compatible, 6to4, Teredo, NAT64 64:ff9b::/96) are judged by that IPv4 address;
- cloud metadata and credential endpoints (:data:`METADATA_ADDRESSES`), in any of these forms,
  are refused even with ``WEBHOOK_ALLOW_PRIVATE=true``, which turns the other address checks
  off (the scheme check stays).

The check runs where the connection is made: :class:`GuardedResolver` vets every address before
aiohttp connects to it, so a hostname that re-resolves to an internal address between a check and
the connect (DNS rebinding) is still refused, and so are numeric spellings the system resolver
understands (``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``0251.0376.0251.0376``). aiohttp does not
call the resolver for IP literals, so :func:`check_url` vets literal hosts itself; callers run
it before every attempt.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})

# Instance metadata and credential services: AWS/GCP/Azure/OpenStack/DigitalOcean/Oracle
# (169.254.169.254), AWS over IPv6 (fd00:ec2::254), ECS task credentials (169.254.170.2), EKS
# Pod Identity (169.254.170.23, fd00:ec2::23), Alibaba (100.100.100.200), Oracle legacy
# (192.0.0.192).
METADATA_ADDRESSES: Final = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "100.100.100.200", "192.0.0.192",
    "fd00:ec2::254", "fd00:ec2::23"))


def _blocks(*entries: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network
                                                     | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(block), name) for block, name in entries)


# https://www.iana.org/assignments/iana-ipv4-special-registry (every entry; the more specific
# ones inside 192.0.0.0/24 are covered by it), plus multicast.
IPV4_SPECIAL: Final = _blocks(
    ("0.0.0.0/8", "'this network' (RFC 791)"),
    ("10.0.0.0/8", "private-use (RFC 1918)"),
    ("100.64.0.0/10", "shared/CGNAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("172.16.0.0/12", "private-use (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.0.2.0/24", "documentation (RFC 5737)"),
    ("192.31.196.0/24", "AS112-v4 (RFC 7535)"),
    ("192.52.193.0/24", "AMT (RFC 7450)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
    ("192.168.0.0/16", "private-use (RFC 1918)"),
    ("192.175.48.0/24", "AS112 direct delegation (RFC 7534)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (RFC 5737)"),
    ("203.0.113.0/24", "documentation (RFC 5737)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved (RFC 1112)"),
    ("255.255.255.255/32", "limited broadcast (RFC 919)"),
)

# https://www.iana.org/assignments/iana-ipv6-special-registry (every entry; 2001::/23 covers
# Teredo, PCP/TURN/DNS-SD anycast, benchmarking, AMT, AS112-v6, ORCHID and DETs). The forms
# that embed IPv4 (::ffff:0:0/96, 64:ff9b::/96, 2002::/16, 2001::/32) are judged by that IPv4
# address before this table is consulted.
IPV6_SPECIAL: Final = _blocks(
    ("::1/128", "loopback (RFC 4291)"),
    ("::/128", "unspecified (RFC 4291)"),
    ("::ffff:0:0/96", "IPv4-mapped (RFC 4291)"),
    ("64:ff9b::/96", "IPv4-IPv6 translation (RFC 6052)"),
    ("64:ff9b:1::/48", "local-use IPv4-IPv6 translation (RFC 8215)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("100:0:0:1::/64", "dummy prefix (RFC 9780)"),
    ("2001::/23", "IETF protocol assignments (RFC 2928)"),
    ("2001:db8::/32", "documentation (RFC 3849)"),
    ("2002::/16", "6to4 (RFC 3056)"),
    ("2620:4f:8000::/48", "AS112 direct delegation (RFC 7534)"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "segment routing SIDs (RFC 9602)"),
    ("fc00::/7", "unique-local (RFC 4193)"),
    ("fe80::/10", "link-local (RFC 4291)"),
)
# Outside the registry, named so a refusal says which rule applied; anything else outside
# 2000::/3 is "not global unicast".
IPV6_OUTSIDE_GLOBAL_UNICAST: Final = _blocks(
    ("fec0::/10", "deprecated site-local (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291)"),
)
_GLOBAL_UNICAST: Final = ipaddress.ip_network("2000::/3")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_HOST: Final = re.compile(r"[0-9a-fA-FxX.]+")


class TargetForbidden(OSError):
    """The webhook target may not be contacted (scheme or address refused by the guard).

    An ``OSError`` so that aiohttp passes it through its resolver error path unchanged
    (wrapped in ``ClientConnectorDNSError``, whose ``os_error`` is this exception)."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, for the forms a stack may route as IPv4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    value = int(address)
    if 1 < value < 2**32:  # deprecated IPv4-compatible ::a.b.c.d (not :: or ::1)
        return ipaddress.IPv4Address(value)
    return None


def _special_block(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv4Address):
        return next((name for block, name in IPV4_SPECIAL if address in block), None)
    for block, name in (*IPV6_SPECIAL, *IPV6_OUTSIDE_GLOBAL_UNICAST):
        if address in block:
            return name
    if address not in _GLOBAL_UNICAST:
        return "non-global-unicast (outside 2000::/3)"
    return None


def metadata_reason(address: IPAddress) -> str | None:
    """Why ``address`` is a cloud metadata target (itself or the IPv4 address it embeds)."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and embedded in METADATA_ADDRESSES:
            return "IPv6 form of a cloud metadata address"
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be a webhook target, or ``None`` when it is public."""
    if (reason := metadata_reason(address)) is not None:
        return reason
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = refusal_reason(embedded)
            return f"IPv6 form of a non-public IPv4 address ({inner})" if inner else None
    block = _special_block(address)
    return f"{block} address" if block else None


ALLOW_HINT: Final = "(WEBHOOK_ALLOW_PRIVATE=true allows it)"
METADATA_HINT: Final = "(never allowed, not even with WEBHOOK_ALLOW_PRIVATE=true)"


def check_address(host: str, *, allow_private: bool, name: str | None = None) -> None:
    """Raise ``TargetForbidden`` when the IP address ``host`` (resolved from ``name``, if
    given) is not an allowed target. With ``allow_private`` only metadata addresses are."""
    address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    reason, hint = metadata_reason(address), METADATA_HINT
    if reason is None and not allow_private:
        reason, hint = refusal_reason(address), ALLOW_HINT
    if reason:
        target = f"host {name} resolves to {address}" if name else f"address {address}"
        raise TargetForbidden(f"SSRF guard refused the target: {target} is a {reason} {hint}")


@lru_cache(maxsize=4096)
def check_url(url: str, *, allow_private: bool) -> URL:
    """Parse and vet a webhook URL before an attempt: scheme http/https, a host, and an allowed
    address when the host is an IP literal (hostnames are vetted by :class:`GuardedResolver`).
    Returns the parsed URL; raises ``TargetForbidden``. Cached: the answer depends only on the
    arguments (hostnames are re-vetted at every connection by the resolver)."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        raise TargetForbidden("SSRF guard refused the target: the url cannot be parsed") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise TargetForbidden(f"SSRF guard refused the target: scheme "
                              f"{parsed.scheme or '(none)'!r} is not http or https")
    host = parsed.raw_host
    if not host:
        raise TargetForbidden("SSRF guard refused the target: the url has no host")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        numeric = _numeric_ipv4(host)
        if numeric is not None:  # vetted here whether or not the HTTP client accepts it
            check_address(str(numeric), allow_private=allow_private, name=host)
        return parsed  # a hostname: the resolver vets what it resolves to
    check_address(host, allow_private=allow_private)
    return parsed


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a resolver makes of a numeric spelling that is not dotted-quad
    (``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376``, ``169.254.43518``)."""
    if not _NUMERIC_HOST.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses a host when any of its addresses is forbidden.

    Refusing the whole host (rather than filtering addresses) keeps the rule simple to state:
    a name that points anywhere internal is not a webhook target."""

    def __init__(self, *, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"], allow_private=self._allow_private, name=host)
        return results

    async def close(self) -> None:
        await self._inner.close()

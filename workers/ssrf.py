"""The SSRF guard: webhook targets must be public http(s) addresses.

A target is refused when its scheme is not http/https, or when any address its host resolves to
is not globally routable: loopback, private (RFC 1918, ULA), link-local, multicast, unspecified,
reserved, shared/CGNAT (100.64.0.0/10), documentation/benchmark ranges, cloud metadata
(169.254.169.254, fd00:ec2::254), and IPv6 forms that embed such an IPv4 address (IPv4-mapped,
IPv4-compatible, 6to4, Teredo, NAT64). ``WEBHOOK_ALLOW_PRIVATE=true`` turns the address checks off
(the scheme check stays).

The check runs where the connection is made: :class:`GuardedResolver` vets every address before
aiohttp connects to it, so a hostname that re-resolves to an internal address between a check and
the connect (DNS rebinding) is still refused. aiohttp does not call the resolver for IP literals,
so :func:`check_url` vets literal hosts itself; callers run it before every attempt.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})

# ``is_global`` covers private, loopback, link-local, reserved, CGNAT, documentation and
# benchmark ranges; these are named too so a refusal can say which rule applied.
_METADATA: Final = frozenset({ipaddress.ip_address("169.254.169.254"),
                              ipaddress.ip_address("fd00:ec2::254")})
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")


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


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be a webhook target, or ``None`` when it is public."""
    if address in _METADATA:
        return "cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = refusal_reason(embedded)
            return f"IPv6 form of a non-public IPv4 address ({inner})" if inner else None
    checks = (("loopback", address.is_loopback), ("unspecified", address.is_unspecified),
              ("link-local", address.is_link_local), ("multicast", address.is_multicast),
              ("shared/CGNAT", isinstance(address, ipaddress.IPv4Address) and address in _CGNAT),
              ("private", address.is_private), ("reserved", address.is_reserved))
    for name, hit in checks:
        if hit:
            return f"{name} address"
    if not address.is_global:
        return "non-global address"
    return None


ALLOW_HINT: Final = "(WEBHOOK_ALLOW_PRIVATE=true allows it)"


def check_address(host: str, *, allow_private: bool, name: str | None = None) -> None:
    """Raise ``TargetForbidden`` when the IP address ``host`` (resolved from ``name``, if
    given) is not an allowed target."""
    if allow_private:
        return
    address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    reason = refusal_reason(address)
    if reason:
        target = f"host {name} resolves to {address}" if name else f"address {address}"
        raise TargetForbidden(f"SSRF guard refused the target: {target} is a {reason} "
                              f"{ALLOW_HINT}")


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
        return parsed  # a hostname: the resolver vets what it resolves to
    check_address(host, allow_private=allow_private)
    return parsed


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

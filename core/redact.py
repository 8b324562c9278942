"""One redaction function for every URL that reaches a log line, an error message or a metric.

Hosted RPC providers put API keys in the path (``…/v2/<key>``) or the query (``?apikey=…``);
database and Redis URLs carry passwords in their userinfo. :func:`redact_url` keeps what an
operator needs to tell endpoints apart (scheme, host, port, the shape of the path) and replaces
the rest with ``***``. :func:`redact_urls_in` applies it to every URL inside free text.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# A path segment that looks like a credential: long, made of token characters only, and with a
# digit or mixed case (``v2``, ``mainnet``, ``eth-mainnet``, ``arbitrum-mainnet`` stay readable;
# random keys do not — a 32-character base62 key without any digit is still mixed case).
_KEY_SEGMENT = re.compile(r"^(?=.*(\d|[a-z].*[A-Z]|[A-Z].*[a-z]))[A-Za-z0-9_\-=.~+]{16,}$")
# A URL inside free text: the userinfo (up to its ``@``) may hold any character but ``@``, ``/``
# and whitespace, so a password with a comma or a quote is still taken as part of the URL.
_URL_IN_TEXT = re.compile(
    r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://(?:[^\s@/]*@)?[^\s'\"<>()\[\]{},]+")


def _redact_path(path: str) -> str:
    return "/".join(MASK if _KEY_SEGMENT.match(segment) else segment
                    for segment in path.split("/"))


def _redact_query(query: str) -> str:
    if not query:
        return ""
    parts = []
    for pair in query.split("&"):
        name, sep, _value = pair.partition("=")
        parts.append(f"{name}={MASK}" if sep else MASK)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` without credentials: userinfo, query values, fragment and key-like path
    segments become ``***``. Never raises; text that is not a URL is masked whole."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, _redact_path(parts.path),
                       _redact_query(parts.query), fragment))


def redact_urls_in(text: str) -> str:
    """``text`` with every ``scheme://…`` inside it passed through :func:`redact_url`."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)

"""Logging configured once in ``main()``: structlog over the standard library, JSON or console.

Modules use ``log = structlog.get_logger(__name__)`` and log events with fields:
``log.info("ingested", chain_id=1, first=10, last=20, logs=300)``.

Credentials stay out of every line, whoever logs it (our code, asyncpg, aiohttp, RQ): values of
secret-bearing keys are replaced, and every URL in the message, in a field value or in a
rendered traceback goes through :func:`core.redact.redact_urls_in` as the last step before
rendering.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from core.redact import redact_urls_in

# Keys never written to logs, whatever a caller passes (secrets stay out of logs).
_REDACTED_KEYS = frozenset({"secret", "previous_secret", "password", "authorization", "headers",
                            "config", "token", "api_key", "apikey", "encryption_key"})


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _REDACTED_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


_PLAIN_TYPES = (int, float, bool, type(None))


def _without_urls(value: Any) -> Any:
    if isinstance(value, str):
        return redact_urls_in(value) if "://" in value else value
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, dict):
        return {key: _without_urls(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_without_urls(item) for item in value]
    text = str(value)  # a URL object, an exception: rendered as text anyway
    return redact_urls_in(text) if "://" in text else value


def _redact_urls(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        event_dict[key] = _without_urls(value)
    return event_dict


def configure_logging(*, level: str = "INFO", fmt: str = "console", service: str = "") -> None:
    """Route structlog and stdlib logging to stderr, as JSON lines or readable console lines."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _redact_urls, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "urllib3", "web3", "rq.worker", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if service:
        structlog.contextvars.bind_contextvars(service=service)

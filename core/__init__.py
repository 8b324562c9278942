"""Shared ground for every blockhook service: settings, database, schema, errors, logging, metrics.

Importing any ``core`` module first imports structlog without rich (see
:func:`_import_structlog_without_rich`).
"""

from __future__ import annotations

import sys


def _import_structlog_without_rich() -> None:
    """structlog's first import pulls in rich whenever rich is installed (for pretty console
    tracebacks): ~50 ms of every service's start-up, a tenth of it on a small machine. The
    services never show rich's tracebacks (:mod:`core.logging` renders exceptions as plain text
    before its renderer, so URLs in them can be redacted), so structlog is imported once here
    with rich hidden; structlog then uses its plain formatter. The scripts that draw tables and
    progress bars with rich import it afterwards as usual."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

"""blockhook workers service."""

import core  # noqa: E402, F401  (first: structlog is imported without rich; see core/__init__.py)

"""Retention: delete what the pipeline no longer needs, never what it still does (see
:mod:`retention.runner` for the contract, :mod:`retention.guards` for what is protected)."""

import core  # noqa: E402, F401  (first: structlog is imported without rich; see core/__init__.py)

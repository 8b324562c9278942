"""Prometheus metrics: ``blockhook_<service>_<thing>_<unit>``; the HTTP endpoint per service."""

from __future__ import annotations

from prometheus_client import start_http_server


def serve_metrics(port: int) -> None:
    """Expose ``/metrics`` on ``port`` in a daemon thread; ``0`` disables it."""
    if port:
        start_http_server(port)

"""Prometheus metrics of the workers (``blockhook_workers_*``; the per-endpoint gauges are
``blockhook_worker_endpoint_*``), served on ``METRICS_PORT``."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

ATTEMPTS: Final = Counter(
    "blockhook_workers_attempts_total",
    "Webhook attempts by outcome: delivered, retry (will be retried), failed (final), "
    "refused (SSRF guard or invalid action config).",
    ["outcome"])
DELIVERY_LATENCY: Final = Histogram(
    "blockhook_workers_delivery_latency_seconds",
    "From the delivery's creation (enqueue) to the endpoint's 2xx, retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 86400))
EVENT_TO_WEBHOOK: Final = Histogram(
    "blockhook_workers_event_to_webhook_seconds",
    "From the event's block timestamp (whole seconds) to the endpoint's 2xx: the chain-to-receiver "
    "latency of live event.matched deliveries (replays and removals not counted).",
    buckets=(0.5, 1, 2, 3, 5, 10, 15, 30, 60, 120, 300, 900, 1800, 3600, 7200, 86400))
ENDPOINT_ATTEMPTS: Final = Counter(
    "blockhook_workers_endpoint_attempts_total",
    "Attempts per endpoint host (the webhook URL's host) by result: delivered, retry, failed "
    "(final, refusals included).",
    ["host", "outcome"])
ENDPOINT_RESPONSE: Final = Histogram(
    "blockhook_workers_endpoint_response_seconds",
    "Time from sending a webhook to its (capped) response, for attempts that got a response.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RETRIES_SCHEDULED: Final = Counter(
    "blockhook_workers_retries_scheduled_total", "Retries scheduled after a retryable failure.")
FAILED: Final = Counter(
    "blockhook_workers_failed_total",
    "Deliveries that ended failed (rejected, refused, or out of attempts).")
CANCELLED: Final = Counter(
    "blockhook_workers_cancelled_total",
    "Deliveries cancelled instead of sent (event invalidated, action or trigger disabled).")

# Every outcome exported from the start (at 0), so rate() sees a counter's first increase.
for _outcome in ("delivered", "retry", "failed", "refused"):
    ATTEMPTS.labels(_outcome)
ENDPOINT_CIRCUIT_OPEN: Final = Gauge(
    "blockhook_worker_endpoint_circuit_open",
    "1 while this worker process holds an endpoint's deliveries back after consecutive failures "
    "(circuit open or probing), else 0. Label host: host:port of the webhook URL.",
    ["host"])
ENDPOINT_INFLIGHT: Final = Gauge(
    "blockhook_worker_endpoint_inflight",
    "Webhook requests this worker process has in flight to an endpoint (host:port).",
    ["host"])
ENDPOINT_WAITING: Final = Gauge(
    "blockhook_worker_endpoint_waiting",
    "Deliveries this worker process holds back for an endpoint (host:port): its concurrency cap "
    "is reached or its circuit is open.",
    ["host"])

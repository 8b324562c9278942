"""Prometheus metrics of the processor (``blockhook_processor_*``), served on ``METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("blockhook_processor_events_total",
                 "Events evaluated against the trigger registry")
MATCHES = Counter("blockhook_processor_matches_total",
                  "(trigger, event) pairs whose conditions held")
DECODE_FAILURES = Counter("blockhook_processor_decode_failures_total",
                          "Candidate logs that did not decode under a trigger's signature")
DELIVERIES_CREATED = Counter("blockhook_processor_deliveries_created_total",
                             "Delivery rows created", ["kind"])
DEFERRED_CREATED = Counter("blockhook_processor_deferred_matches_total",
                           "Matches parked until their event is deep enough")
BATCH_LAG_BATCHES = Gauge("blockhook_processor_batch_lag_batches",
                          "Event batches committed and not yet processed")
BATCH_LAG_EVENTS = Gauge("blockhook_processor_batch_lag_events",
                         "Events in batches committed and not yet processed")
BATCH_LAG_SECONDS = Gauge("blockhook_processor_batch_lag_seconds",
                          "Age of the oldest event batch committed and not yet processed (0: none)")
OPEN_DELIVERIES = Gauge("blockhook_processor_open_deliveries",
                        "Deliveries not final yet, by state: pending (not enqueued), queued (first "
                        "attempt due), retrying (queued after a failed attempt)", ["state"])
ENQUEUE_LATENCY = Histogram(
    "blockhook_processor_enqueue_latency_seconds",
    "From the event's commit (its batch's created_at) to its delivery job being enqueued",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INVALID_TRIGGERS = Gauge("blockhook_processor_invalid_triggers",
                         "Enabled triggers skipped because they are invalid")
REQUEUED = Counter("blockhook_processor_requeued_total",
                   "Deliveries enqueued by the sweep (left pending, or queued and lost)", ["reason"])
CANCELLED = Counter("blockhook_processor_cancelled_total",
                    "Matched deliveries cancelled because their event was invalidated")

# Every label value exported from the start (at 0), so rate() sees a counter's first increase and
# dashboards show the series before it first happens.
for _kind in ("matched", "removed"):
    DELIVERIES_CREATED.labels(_kind)
for _reason in ("pending", "lost"):
    REQUEUED.labels(_reason)

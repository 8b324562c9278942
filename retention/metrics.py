"""Prometheus metrics of retention (``blockhook_processor_*``: the processor runs it), served on
the processor's ``METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DELETED = Counter("blockhook_processor_retention_deleted_rows_total",
                  "Rows deleted by retention (events: also the rows of dropped chunks)", ["table"])
CHUNKS = Counter("blockhook_processor_retention_chunks_total",
                 "events chunks dropped or compressed by retention", ["action"])
LAST_PASS = Gauge("blockhook_processor_retention_last_pass_timestamp_seconds",
                  "Unix time the last complete retention pass ended")
TABLE_BYTES = Gauge("blockhook_processor_table_size_bytes",
                    "Disk size of each blockhook table with its indexes and TOAST (events: all "
                    "chunks), refreshed after each retention pass", ["table"])

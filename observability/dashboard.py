"""The "blockhook" Grafana dashboard, written as data: ``python observability/dashboard.py``
regenerates ``observability/grafana/dashboards/blockhook.json`` (committed; Grafana provisions it).

Every query uses only metrics the services export (``tests/ops/test_observability.py`` scrapes the
real services and checks each metric and label named here). Rows, top to bottom: health at a
glance, chains, ingest, processor, deliveries, latency, storage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "blockhook.json"
DATASOURCE = {"type": "prometheus", "uid": "blockhook-prometheus"}
UID = "blockhook"

# The chain of an indexer's series: its process's blockhook_ingest_chain_info.
CHAIN = "* on (job, instance) group_left (chain_id) blockhook_ingest_chain_info"


def _quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[5m])))",
             f"{prefix}p{int(q * 100)}") for q in (0.5, 0.95, 0.99)]


class Layout:
    """Places panels left to right on Grafana's 24-column grid, rows under each other."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x, self.row_height = 0, 0

    def panel(self, kind: str, title: str, description: str,
              targets: list[tuple[str, str]], *, width: int = 8, height: int = 8,
              unit: str = "short", stacked: bool = False,
              thresholds: list[tuple[float, str]] | None = None) -> None:
        if self.x + width > 24:
            self._newline()
        steps = [{"color": "green", "value": None}] + [
            {"color": color, "value": value} for value, color in (thresholds or [])]
        defaults: dict[str, Any] = {"unit": unit,
                                    "thresholds": {"mode": "absolute", "steps": steps}}
        options: dict[str, Any] = {"legend": {"displayMode": "list", "placement": "bottom",
                                              "showLegend": True},
                                   "tooltip": {"mode": "multi", "sort": "desc"}}
        if kind == "timeseries":
            defaults["custom"] = {"fillOpacity": 15 if stacked else 5, "lineWidth": 1,
                                  "stacking": {"mode": "normal" if stacked else "none"},
                                  "showPoints": "never"}
        else:  # stat
            defaults["color"] = {"mode": "thresholds"}
            options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "background", "graphMode": "area", "textMode": "auto"}
        self.panels.append({
            "type": kind, "title": title, "description": description,
            "id": len(self.panels) + 1, "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
            "targets": [{"refId": chr(ord("A") + n), "datasource": DATASOURCE, "expr": expr,
                         "legendFormat": legend, "range": True}
                        for n, (expr, legend) in enumerate(targets)],
        })
        self.x += width
        self.row_height = max(self.row_height, height)


def build() -> dict[str, Any]:
    layout = Layout()
    stat, series = "stat", "timeseries"

    layout.row("Health: is blockhook up and keeping up?")
    layout.panel(stat, "Services up", "Processes answering /metrics, per kind (0: none running).",
                 [('sum by (job) (up{job=~"blockhook-.*"})', "{{job}}")], width=6, height=5,
                 thresholds=None)
    layout.panel(stat, "Ingest lag (blocks)", "Blocks between head − CONFIRMATIONS and the "
                 "checkpoint, per chain.",
                 [(f"max by (chain_id) (blockhook_ingest_lag_blocks {CHAIN})", "chain {{chain_id}}")],
                 width=5, height=5, thresholds=[(10, "orange"), (50, "red")])
    layout.panel(stat, "Oldest unprocessed batch", "Age of the oldest event batch no processor "
                 "has handled yet (0: none waiting).",
                 [("max(blockhook_processor_batch_lag_seconds)", "oldest batch")],
                 width=5, height=5, unit="s", thresholds=[(30, "orange"), (300, "red")])
    layout.panel(stat, "Failed attempts (10 min)", "Share of webhook attempts that did not get "
                 "a 2xx over 10 minutes, all endpoints.",
                 [('sum(rate(blockhook_workers_endpoint_attempts_total{outcome!="delivered"}[10m]))'
                   " / sum(rate(blockhook_workers_endpoint_attempts_total[10m]))", "failure rate")],
                 width=4, height=5, unit="percentunit", thresholds=[(0.05, "orange"), (0.2, "red")])
    layout.panel(stat, "Retry backlog", "Deliveries waiting for a retry after a failed attempt.",
                 [('max(blockhook_processor_open_deliveries{state="retrying"})', "retrying")],
                 width=4, height=5, thresholds=[(10, "orange"), (100, "red")])

    layout.row("Chains: head, checkpoint and lag")
    layout.panel(series, "Head and checkpoint", "The node's head and the last block fully "
                 "ingested, per chain.",
                 [(f"max by (chain_id) (blockhook_ingest_head_block {CHAIN})", "chain {{chain_id}} head"),
                  (f"max by (chain_id) (blockhook_ingest_checkpoint_block {CHAIN})",
                   "chain {{chain_id}} checkpoint")], width=12)
    layout.panel(series, "Lag (blocks)", "head − CONFIRMATIONS − checkpoint per chain; the "
                 "BlockhookIngestLagging alert fires above 50 for 5 minutes.",
                 [(f"max by (chain_id) (blockhook_ingest_lag_blocks {CHAIN})", "chain {{chain_id}}")],
                 width=12, thresholds=[(50, "red")])

    layout.row("Ingest: logs and RPC")
    layout.panel(series, "Logs stored per second", "New logs written to events, per chain.",
                 [(f"sum by (chain_id) (rate(blockhook_ingest_logs_total[5m]) {CHAIN})",
                   "chain {{chain_id}}")], unit="ops")
    layout.panel(series, "RPC errors by kind", "Failed or refused JSON-RPC answers per second "
                 "(incomplete: logs provably missing, refetched; behind: block not seen yet).",
                 [("sum by (kind) (rate(blockhook_ingest_rpc_errors_total[5m]))", "{{kind}}")],
                 unit="ops", stacked=True)
    layout.panel(series, "RPC errors by endpoint", "Failures per second per endpoint "
                 "(redacted URL) and kind.",
                 [("sum by (endpoint, kind) (rate(blockhook_ingest_rpc_endpoint_errors_total[5m]))",
                   "{{endpoint}} {{kind}}")], unit="ops", stacked=True)
    layout.panel(series, "RPC calls by endpoint", "JSON-RPC calls per second per endpoint.",
                 [("sum by (endpoint) (rate(blockhook_ingest_rpc_requests_total[5m]))",
                   "{{endpoint}}")], unit="ops")
    layout.panel(series, "RPC latency p95 by endpoint", "95th percentile of one call (a batch "
                 "counts as one).",
                 [("histogram_quantile(0.95, sum by (le, endpoint) "
                   "(rate(blockhook_ingest_rpc_request_duration_seconds_bucket[5m])))",
                   "{{endpoint}}")], unit="s")
    layout.panel(series, "Endpoint health score", "Routing score 0–1 per endpoint (0: not used; "
                 "alert BlockhookRpcEndpointDown).",
                 [("blockhook_ingest_rpc_endpoint_health_score", "{{endpoint}}")],
                 unit="percentunit")

    layout.row("Processor: backlog and commit → enqueue")
    layout.panel(series, "Batch lag", "Event batches committed and not yet processed, and the "
                 "events in them.",
                 [("max(blockhook_processor_batch_lag_batches)", "batches"),
                  ("max(blockhook_processor_batch_lag_events)", "events")])
    layout.panel(series, "Oldest unprocessed batch", "Its age; alert BlockhookProcessorBatchStuck "
                 "above 5 minutes.",
                 [("max(blockhook_processor_batch_lag_seconds)", "age")], unit="s",
                 thresholds=[(300, "red")])
    layout.panel(series, "Commit → enqueue latency", "From an event's commit to its delivery "
                 "job in the queue.",
                 _quantiles("blockhook_processor_enqueue_latency_seconds"), unit="s")
    layout.panel(series, "Events evaluated and matches", "Per second, all processors.",
                 [("sum(rate(blockhook_processor_events_total[5m]))", "events"),
                  ("sum(rate(blockhook_processor_matches_total[5m]))", "matches"),
                  ("sum by (kind) (rate(blockhook_processor_deliveries_created_total[5m]))",
                   "deliveries created ({{kind}})")], unit="ops", width=12)
    layout.panel(series, "Invalid triggers", "Enabled triggers skipped as invalid (see "
                 "triggers.error).",
                 [("max(blockhook_processor_invalid_triggers)", "invalid")], width=12,
                 thresholds=[(1, "red")])

    layout.row("Deliveries: status, endpoints, retries")
    layout.panel(series, "Attempts by outcome", "Webhook attempts per second: delivered, retry, "
                 "failed (final), refused (SSRF guard or invalid config).",
                 [("sum by (outcome) (rate(blockhook_workers_attempts_total[5m]))", "{{outcome}}")],
                 unit="ops", stacked=True)
    layout.panel(series, "Attempts by endpoint", "Per endpoint host and result, per second.",
                 [("sum by (host, outcome) (rate(blockhook_workers_endpoint_attempts_total[5m]))",
                   "{{host}} {{outcome}}")], unit="ops", stacked=True)
    layout.panel(series, "Failure rate by endpoint", "Share of attempts without a 2xx, per host "
                 "(alert BlockhookDeliveryFailureRate above 20 % for 10 minutes).",
                 [('sum by (host) (rate(blockhook_workers_endpoint_attempts_total{outcome!="delivered"}[5m]))'
                   " / sum by (host) (rate(blockhook_workers_endpoint_attempts_total[5m]))",
                   "{{host}}")], unit="percentunit", thresholds=[(0.2, "red")])
    layout.panel(series, "Open deliveries (retry backlog)", "Deliveries not final yet: pending "
                 "(not enqueued), queued (first attempt due), retrying (after a failed attempt).",
                 [("max by (state) (blockhook_processor_open_deliveries)", "{{state}}")],
                 stacked=True)
    layout.panel(series, "Ended failed or cancelled", "Deliveries per hour that ended failed "
                 "(not retried again) or cancelled (reorg, disabled trigger).",
                 [("sum(increase(blockhook_workers_failed_total[1h]))", "failed"),
                  ("sum(increase(blockhook_workers_cancelled_total[1h]))", "cancelled by workers"),
                  ("sum(increase(blockhook_processor_cancelled_total[1h]))", "cancelled by reorgs")])
    layout.panel(series, "Retries scheduled and requeued", "Per second: retries scheduled by "
                 "workers; deliveries the processor's sweep enqueued again.",
                 [("sum(rate(blockhook_workers_retries_scheduled_total[5m]))", "retries scheduled"),
                  ("sum by (reason) (rate(blockhook_processor_requeued_total[5m]))",
                   "requeued ({{reason}})")], unit="ops")
    layout.panel(series, "Endpoints: paused, in flight, waiting", "Per endpoint (host:port): 1 "
                 "while a worker's circuit breaker holds its deliveries back (they wait, no "
                 "attempts used; one probe per WORKER_CIRCUIT_PROBE_INTERVAL); requests in flight "
                 "(at most WORKER_ENDPOINT_CONCURRENCY per worker process); deliveries waiting "
                 "for a place.",
                 [("max by (host) (blockhook_worker_endpoint_circuit_open)", "{{host}} paused"),
                  ("sum by (host) (blockhook_worker_endpoint_inflight)", "{{host}} in flight"),
                  ("sum by (host) (blockhook_worker_endpoint_waiting)", "{{host}} waiting")])

    layout.row("Latency: chain → webhook")
    layout.panel(series, "Block → webhook", "From the event's block timestamp to the receiver's "
                 "2xx (live event.matched deliveries; block time has whole seconds).",
                 _quantiles("blockhook_workers_event_to_webhook_seconds"), unit="s")
    layout.panel(series, "Delivery created → delivered", "From the delivery row's creation to the "
                 "endpoint's 2xx, retries included.",
                 _quantiles("blockhook_workers_delivery_latency_seconds"), unit="s")
    layout.panel(series, "Endpoint response time", "Time from sending a webhook to its response.",
                 _quantiles("blockhook_workers_endpoint_response_seconds"), unit="s")

    layout.row("Storage")
    layout.panel(series, "Table sizes", "Disk size per table, indexes and TOAST included "
                 "(refreshed after each retention pass).",
                 [("max by (table) (blockhook_processor_table_size_bytes)", "{{table}}")],
                 unit="bytes", width=12)
    layout.panel(series, "Retention: rows deleted", "Rows deleted per table per hour "
                 "(events: also the rows of dropped chunks).",
                 [("sum by (table) (increase(blockhook_processor_retention_deleted_rows_total[1h]))",
                   "{{table}}")], width=12)

    return {
        "uid": UID, "title": "blockhook", "description": "blockhook: chains, ingest, processor, "
        "deliveries, latency and storage (docs/operations.md, Dashboard).",
        "tags": ["blockhook"], "timezone": "", "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"}, "templating": {"list": []},
        "annotations": {"list": []}, "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Prometheus metrics of the indexer (``blockhook_ingest_*``), on a registry the caller picks:
the process-wide default in ``main()``, a private one where several indexers share a process
(tests, benchmarks)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from core.errors import RpcBadResponse, RpcRangeTooLarge, RpcUnavailable
from ingest.completeness import HashMismatch, IncompleteLogs, NotSeenYet
from ingest.rpc import BlockNotSeen, RpcTimeout

RPC_ERROR_KINDS = ("timeout", "rate_limited", "unavailable", "range_too_large", "bad_response",
                   "hash_mismatch", "incomplete", "behind")


class IngestMetrics:
    """chain id (info), head, checkpoint, lag, logs ingested, batch duration, RPC errors by kind, range size,
    reorgs and their depth, unconfirmed hash mismatches; per RPC endpoint: calls, errors by kind,
    latency, head lag and health score."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        """``registry=None`` keeps the metrics unregistered (several indexers in one process)."""
        # blockhook_ingest_chain_info{chain_id="1"} 1: joins this process's series to its chain
        # (dashboards and alerts: ``* on(job, instance) group_left(chain_id)``).
        self.chain = Info("blockhook_ingest_chain", "The chain this indexer ingests",
                          registry=registry)
        self.head_block = Gauge("blockhook_ingest_head_block", "Node head block number",
                                registry=registry)
        self.checkpoint_block = Gauge("blockhook_ingest_checkpoint_block",
                                      "Last block fully ingested", registry=registry)
        self.lag_blocks = Gauge("blockhook_ingest_lag_blocks",
                                "Blocks between the ingest target (head - confirmations) and the checkpoint",
                                registry=registry)
        self.logs = Counter("blockhook_ingest_logs", "Logs newly stored", registry=registry)
        self.batch_duration_seconds = Histogram(
            "blockhook_ingest_batch_duration_seconds", "Time to write one range (one transaction)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self.rpc_errors = Counter("blockhook_ingest_rpc_errors", "JSON-RPC failures by kind",
                                  ["kind"], registry=registry)
        self.range_blocks = Gauge("blockhook_ingest_range_blocks",
                                  "Current eth_getLogs range size in blocks", registry=registry)
        self.reorgs = Counter("blockhook_ingest_reorgs", "Reorgs detected and handled",
                              registry=registry)
        self.unconfirmed_mismatches = Counter(
            "blockhook_ingest_unconfirmed_mismatches",
            "Stored block hashes a node contradicted without serving a linked alternative chain "
            "(or not again on the confirming read): not treated as reorgs", registry=registry)
        self.reorg_depth_blocks = Histogram(
            "blockhook_ingest_reorg_depth_blocks", "Depth of handled reorgs in blocks",
            buckets=(1, 2, 3, 5, 8, 13, 21, 34, 64, 128, 256), registry=registry)
        for kind in RPC_ERROR_KINDS:
            self.rpc_errors.labels(kind=kind)
        # Per endpoint of RPC_URL, labelled with its redacted form (core.redact): no API key
        # ever reaches a label.
        self.rpc_requests = Counter("blockhook_ingest_rpc_requests",
                                    "JSON-RPC calls sent, per endpoint and method",
                                    ["endpoint", "method"], registry=registry)
        self.rpc_endpoint_errors = Counter(
            "blockhook_ingest_rpc_endpoint_errors", "Failed JSON-RPC calls per endpoint, by kind",
            ["endpoint", "kind"], registry=registry)
        self.rpc_request_duration_seconds = Histogram(
            "blockhook_ingest_rpc_request_duration_seconds",
            "Time of one JSON-RPC call (a batch counts as one) per endpoint", ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry)
        self.rpc_endpoint_head_lag_blocks = Gauge(
            "blockhook_ingest_rpc_endpoint_head_lag_blocks",
            "Blocks between the best head of all endpoints and this endpoint's head",
            ["endpoint"], registry=registry)
        self.rpc_endpoint_health_score = Gauge(
            "blockhook_ingest_rpc_endpoint_health_score",
            "Routing score 0..1 from errors, latency and head lag (0: not used)", ["endpoint"],
            registry=registry)

    def observe_progress(self, *, head: int | None = None, target: int | None = None,
                         checkpoint: int | None = None) -> None:
        if head is not None:
            self.head_block.set(head)
        if checkpoint is not None:
            self.checkpoint_block.set(checkpoint)
        if target is not None and checkpoint is not None:
            self.lag_blocks.set(max(0, target - checkpoint))


def error_kind(error: Exception) -> str:
    """The ``kind`` label of an RPC error (``blockhook_ingest_rpc_errors_total`` and the
    per-endpoint ``blockhook_ingest_rpc_endpoint_errors_total``)."""
    if isinstance(error, IncompleteLogs):
        return "incomplete"
    if isinstance(error, NotSeenYet | BlockNotSeen):
        return "behind"
    if isinstance(error, HashMismatch):
        return "hash_mismatch"
    if isinstance(error, RpcTimeout):
        return "timeout"
    if isinstance(error, RpcRangeTooLarge):
        return "range_too_large"
    if isinstance(error, RpcBadResponse):
        return "bad_response"
    if isinstance(error, RpcUnavailable) and (error.retry_after is not None or "429" in str(error)):
        return "rate_limited"
    return "unavailable"

"""Prometheus metrics of the indexer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("indexer_events_total", "Records consumed and applied", ["entity"])
DLQ = Counter("indexer_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
RETRIES = Counter("indexer_batch_retries_total", "Effects retried after a transient failure")
REDELIVERED = Counter(
    "indexer_redelivered_records_total",
    "Records skipped because the store had already applied their offset",
)
DOCUMENTS = Counter(
    "indexer_documents_total",
    "Documents written (written) or refused as already superseded by a newer owner (superseded)",
    ["kind"],
)
BATCH_SIZE = Histogram(
    "indexer_batch_events",
    "Records per step",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10_000, 20_000),
)
BATCH_SECONDS = Histogram("indexer_batch_seconds", "Time to run and commit one step")
PROPAGATED = Counter(
    "indexer_propagated_documents_total", "Documents rewritten because a parent changed"
)
LAG = Gauge(
    "indexer_consumer_lag", "Records behind the end of each partition", ["topic", "partition"]
)
BULK_SECONDS = Histogram("indexer_bulk_seconds", "Latency of one _bulk request")
FANOUT_DOCUMENTS = Histogram(
    "indexer_fanout_documents",
    "Documents rewritten by fan-out per step",
    buckets=(0, 1, 10, 100, 1000, 10_000, 100_000),
)
ACTIVE_PARTITIONS = Gauge(
    "indexer_active_partitions", "Group partitions this replica owns and writes"
)
READY = Gauge("indexer_ready", "1 while the consumer runs: what /readyz answers")
REWRITING = Gauge("indexer_rewriting", "1 while a newly owned partition is being rewritten whole")
ARTIFACTS_HELD = Gauge(
    "indexer_artifacts_held",
    "1 while artifact records wait for the parent topics to catch up (parents first)",
)
DEFERRED = Counter(
    "indexer_deferred_documents_total",
    "Document writes deferred while a backlog is consumed (written once it is drained)",
)
REFRESHES = Counter(
    "indexer_refreshes_total",
    "Refreshes of the written indices right after a step's writes (INDEXER_REFRESH_AFTER_WRITE_S)",
)

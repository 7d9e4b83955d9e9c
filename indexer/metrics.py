"""Prometheus metrics of the indexer."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("indexer_events_total", "Events consumed and applied", ["entity"])
DLQ = Counter("indexer_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
RETRIES = Counter("indexer_batch_retries_total", "Batches retried after a transient failure")
BATCH_SIZE = Histogram(
    "indexer_batch_events", "Events per batch", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000)
)
BATCH_SECONDS = Histogram("indexer_batch_seconds", "Time to apply one batch to Elasticsearch")
PROPAGATED = Counter("indexer_propagated_documents_total", "Documents re-resolved by fan-out")
LAG = Gauge(
    "indexer_consumer_lag", "Records behind the end of each partition", ["topic", "partition"]
)
BULK_SECONDS = Histogram("indexer_bulk_seconds", "Latency of one _bulk request")
FANOUT_DOCUMENTS = Histogram(
    "indexer_fanout_documents",
    "Documents re-resolved by fan-out per batch",
    buckets=(0, 1, 10, 100, 1000, 10_000, 100_000),
)
FANOUT_SECONDS = Histogram("indexer_fanout_seconds", "Time spent in fan-out per batch")
ARTIFACTS_HELD = Gauge(
    "indexer_artifacts_held",
    "1 while the artifact partitions are paused so that parents are indexed first",
)

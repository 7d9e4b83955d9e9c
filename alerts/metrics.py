"""Prometheus metrics of the alerts worker (served on ALERTS_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CHANGES = Counter("alerts_changed_artifacts_total", "Changed artifact ids evaluated")
BAD_RECORDS = Counter("alerts_bad_change_records_total", "Change records that were not valid")
FORCED_REFRESHES = Counter(
    "alerts_forced_refreshes_total", "Refreshes forced after waiting for the indexer's writes"
)
MATCHES = Counter("alerts_matches_total", "Matches seen (before deduplication)")
PUBLISHED = Counter("alerts_published_total", "Alerts published to the alert topic")
SEARCH_ERRORS = Counter(
    "alerts_search_errors_total", "Saved searches Elasticsearch refused to evaluate"
)
RETRIES = Counter("alerts_retries_total", "Batches retried after a transient failure")
BATCH_SECONDS = Histogram("alerts_batch_seconds", "Time to evaluate a batch of changes")
WEBHOOKS = Counter("alerts_webhook_deliveries_total", "Webhook deliveries", ["outcome"])
PRUNED = Counter("alerts_ledger_pruned_total", "Ledger entries deleted by the periodic prune")

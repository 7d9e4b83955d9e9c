"""Prometheus metrics of `sync-prefect` (served on its /metrics with /livez and /readyz)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter(
    "sync_prefect_events_total",
    "Events Kafka acknowledged, by entity and op (rate() gives events/s)",
    ["entity", "op", "phase"],
)
LAG = Gauge(
    "sync_prefect_lag_seconds",
    "Seconds the stream is behind Prefect's commits: now minus the commit time of the "
    "oldest transaction not yet acknowledged by Kafka, or the last one's commit-to-ack delay",
)
CONFIRMED_LSN = Gauge(
    "sync_prefect_confirmed_lsn", "The LSN last confirmed to the replication slot (bytes)"
)
IN_FLIGHT = Gauge("sync_prefect_in_flight_events", "Events sent to Kafka and not yet acknowledged")
PHASE = Gauge("sync_prefect_phase", "0 starting, 1 snapshot, 2 streaming")
SNAPSHOT_ROWS = Gauge("sync_prefect_snapshot_rows", "Snapshot rows published, by table", ["table"])
SNAPSHOT_TOTAL = Gauge(
    "sync_prefect_snapshot_rows_expected", "Rows in the snapshot, by table", ["table"]
)
REFETCHES = Counter(
    "sync_prefect_refetches_total",
    "Rows read again because the stream left a large column out (unchanged TOAST)",
)
TRUNCATES = Counter(
    "sync_prefect_truncates_total",
    "TRUNCATEs seen on a Prefect table (their rows are not deleted from the index)",
    ["table"],
)
RECONNECTS = Counter(
    "sync_prefect_reconnects_total", "Restarts of the session after a transient failure"
)

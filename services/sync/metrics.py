"""Prometheus metrics of `sync-prefect` (served on its /metrics with /livez and /readyz).

Both modes share the events, lag, phase and reconnect metrics; `sync_prefect_api_*` are
the API mode's own.
"""

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
    "TRUNCATEs of a Prefect table (each published as deletes of what its topic holds)",
    ["table"],
)
RECONNECTS = Counter(
    "sync_prefect_reconnects_total", "Restarts of the session after a transient failure"
)

# ---- the API mode (sync-prefect --api-url) ---------------------------------------------------
API_EVENTS = Counter(
    "sync_prefect_api_events_received_total", "Prefect events received on the event stream"
)
API_READS = Counter(
    "sync_prefect_api_reads_total", "Entities read again from Prefect's REST API after events"
)
QUEUED = Gauge("sync_prefect_api_queued", "Entities waiting to be read from Prefect's API")
RECONCILE_PASSES = Counter(
    "sync_prefect_api_reconcile_passes_total", "Reconcile passes (paged listings) completed"
)
RECONCILE_SECONDS = Gauge(
    "sync_prefect_api_reconcile_seconds", "Duration of the last completed reconcile pass"
)
DELETES_FOUND = Counter(
    "sync_prefect_api_vanished_total",
    "Entities a reconcile pass found gone from Prefect (404) and published as deleted",
)

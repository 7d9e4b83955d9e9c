"""Settings shared by both deployables, read from environment variables.

Each deployable builds its settings once in its entry point and passes them
down; nothing here is read at import time. Secrets are ``SecretStr`` so they
never appear in logs or reprs.
"""

from __future__ import annotations

import socket

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach Kafka and which topics carry the lifecycle events."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = Field(
        default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    sasl_mechanism: str | None = Field(
        default=None, pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    topic_prefix: str = ""
    topic_flows: str = "prefect.flows"
    topic_deployments: str = "prefect.deployments"
    topic_flow_runs: str = "prefect.flow-runs"
    topic_task_runs: str = "prefect.task-runs"
    topic_artifacts: str = "prefect.artifacts"
    topic_dlq: str = "prefect.dlq"
    # internal: artifacts repartitioned by key for collections (indexer/collections.py)
    topic_members: str = "prefect.indexer.collection-members"
    # the indexer's change feed (artifact ids and versions it wrote; INDEXER_PUBLISH_CHANGES)
    topic_changes: str = "prefect.indexer.artifact-changes"
    # saved-search alerts (alerts/, docs/search.md "Saved searches and alerts")
    topic_alerts: str = "prefect.alerts"
    topic_alerts_dlq: str = "prefect.alerts.dlq"
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    group_id: str = "prefect-artifact-indexer"

    def topic_for(self, entity: str) -> str:
        """The full topic name for one of the five entity names."""
        name = {
            "flow": self.topic_flows,
            "deployment": self.topic_deployments,
            "flow_run": self.topic_flow_runs,
            "task_run": self.topic_task_runs,
            "artifact": self.topic_artifacts,
        }[entity]
        return self.topic_prefix + name

    @property
    def members_topic(self) -> str:
        """The full name of the indexer's internal member topic."""
        return self.topic_prefix + self.topic_members

    @property
    def changes_topic(self) -> str:
        """The full name of the indexer's change feed (read by the alerts worker)."""
        return self.topic_prefix + self.topic_changes

    @property
    def alerts_topic(self) -> str:
        """The full name of the topic saved-search alerts are published to."""
        return self.topic_prefix + self.topic_alerts

    @property
    def alerts_dlq_topic(self) -> str:
        """The full name of the topic of alerts whose webhook failed for good."""
        return self.topic_prefix + self.topic_alerts_dlq

    @property
    def dlq_topic(self) -> str:
        """The full dead-letter topic name."""
        return self.topic_prefix + self.topic_dlq

    def entity_by_topic(self) -> dict[str, str]:
        """Map each full topic name back to its entity name."""
        return {
            self.topic_for(e): e for e in ("flow", "deployment", "flow_run", "task_run", "artifact")
        }


class ElasticsearchSettings(BaseSettings):
    """How to reach Elasticsearch and how the indices are named."""

    model_config = SettingsConfigDict(env_prefix="ELASTICSEARCH_", extra="ignore")

    url: str = "http://127.0.0.1:9200"
    ca_certs: str | None = None
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    index_prefix: str = "prefect-"
    request_timeout_s: float = Field(default=30.0, gt=0)
    number_of_shards: int = Field(default=1, ge=1)
    number_of_replicas: int = Field(default=0, ge=0)
    # the periodic refresh of the artifact and collection indices, a backstop only: the
    # indexer refreshes what it wrote (INDEXER_REFRESH_AFTER_WRITE_S, ADR 0012) and a
    # backlog is refreshed when its deferred documents are written (ADR 0013). Each refresh
    # cuts a segment that is merged later: a 1 s refresh during an initial load made
    # Elasticsearch do more than twice the work of the same documents in one bulk load.
    # Set it to 1s if the indexer's refresh is turned off. Applied when the indexer or
    # `bootstrap` starts, to existing indices too.
    refresh_interval: str = Field(default="30s", pattern=r"^(-1|[1-9][0-9]*(ms|s|m|h))$")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class IndexerSettings(BaseSettings):
    """The indexer's state, identity, batches and retries."""

    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore")

    # the embedded state store (RocksDB), one directory per replica; keep it on a volume
    state_dir: str = ".local/indexer-state"
    # a stable name of this replica (the pod name in a StatefulSet; default: the host name)
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1)
    # Kafka static membership (group.instance.id = instance_id): a restarted replica gets
    # its partitions back without a rebalance, so it resumes without rewriting them
    static_membership: bool = False
    # decoded values of hot state keys (parents, counters) kept across steps: at 1M, from a
    # backlog, 200,000 peaked at 1,046 MiB RSS (380 s), 100,000 at 976 MiB (348 s), one
    # run each back to back (RESULTS.md, "Indexer after ADR 0013")
    state_cache_entries: int = Field(default=100_000, ge=1_000)
    # documents of a partition rewritten per step while a partition is resynchronised
    rewrite_budget: int = Field(default=5_000, ge=1)
    # steps whose writes may be in flight while the next one is computed
    pipeline_depth: int = Field(default=2, ge=1, le=16)
    # parents first: hold artifact records while the parent topics lag by more than this
    # many records (0: never), at most `parents_first_max_s` seconds per batch
    parents_first_lag: int = Field(default=2_000, ge=0)
    parents_first_max_s: float = Field(default=30.0, gt=0)
    max_batch: int = Field(default=5000, ge=1)
    # a backlog of more than this many records (0: never) defers document writes: a
    # document changed again and again while it is consumed is written once, except
    # that one step every `defer_max_s` seconds writes what is pending (at 5 s, a 100k
    # initial load still wrote each collection 2.3 times; at 30 s about once: ADR 0013)
    defer_lag: int = Field(default=5_000, ge=0)
    defer_max_s: float = Field(default=30.0, gt=0)
    # refresh the indices a step wrote once its writes are acknowledged, at most once every
    # this many seconds and not while a backlog defers documents (indexer/refresh.py), so a
    # write is searchable without waiting for the index's periodic refresh (1 s); 0: never
    refresh_after_write_s: float = Field(default=0.25, ge=0)
    # documents carry their searchable text and typed values (`x`, `v`: the search
    # extension's `q` and `where`); false indexes faster, and those match nothing
    search_text: bool = True
    # publish the ids and versions of the artifact documents each step wrote to the change
    # feed (KAFKA_TOPIC_CHANGES), after Elasticsearch accepted them: the alerts worker's input
    publish_changes: bool = False
    batch_timeout_ms: int = Field(default=100, ge=1)
    # the group consumer's fetches: Kafka answers once this many bytes are ready or after
    # `fetch_max_wait_ms`, so a moderate rate makes fewer, larger steps (each step pays a
    # bulk request, a store commit and an offset commit) for at most that much latency
    fetch_min_bytes: int = Field(default=1_048_576, ge=1)
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    # Kafka's per-partition fetch size (aiokafka's default): one fetch round brings at
    # most this much of each partition, so it also sets how topics interleave.
    max_partition_fetch_bytes: int = Field(default=1_048_576, ge=1024)
    bulk_concurrency: int = Field(default=2, ge=1)
    bulk_chunk: int = Field(default=1000, ge=1)
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    max_event_bytes: int = Field(default=1_000_000, ge=1024)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)


class AlertsSettings(BaseSettings):
    """The alerts worker (`artifact-search alerts`): saved searches evaluated on changes."""

    model_config = SettingsConfigDict(env_prefix="ALERTS_", extra="ignore")

    group_id: str = "prefect-artifact-alerts"
    max_batch: int = Field(default=500, ge=1)
    # how long to wait for the indexer's writes to become searchable by the periodic refresh
    # before forcing a refresh of the index (0: force it as soon as a batch finds a change
    # not searchable yet; see ADR 0008, "Latency")
    visibility_wait_s: float = Field(default=0.0, ge=0)
    # a claimed alert not marked published within this time is taken over and published by
    # another attempt (its claimant died); keep it far above a batch's duration
    claim_timeout_s: float = Field(default=60.0, ge=0)
    # the webhook dispatcher: attempts per alert, then the alert dead-letter topic
    webhooks: bool = True
    webhook_attempts: int = Field(default=5, ge=1, le=100)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_backoff_initial_s: float = Field(default=0.5, gt=0)
    webhook_backoff_max_s: float = Field(default=30.0, gt=0)
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9465, ge=0, le=65535)
    # hosts, `*.domain` wildcards, IPs and CIDRs webhooks may be sent to (alerts/egress.py);
    # empty (the default): no webhook is accepted or sent. Read by the query API too.
    webhook_allowed_hosts: str = ""
    # ledger entries claimed longer ago than this are deleted (0: kept for ever; ADR 0008)
    ledger_retention_days: float = Field(default=0.0, ge=0)
    ledger_prune_interval_s: float = Field(default=3600.0, gt=0)
    # a saved search with `notify_existing` alerts at most this many existing matches
    existing_scan_max: int = Field(default=10_000, ge=1)


class QuerySettings(BaseSettings):
    """The query API's own knobs; defaults mirror Prefect server's."""

    model_config = SettingsConfigDict(env_prefix="QUERY_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=4200, ge=1, le=65535)
    default_limit: int = Field(default=200, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    # Deepest `offset + limit` answered by one search; at most the indices' own
    # `max_result_window` (services/es/indices.py), deeper pages use search_after.
    max_result_window: int = Field(default=50_000, ge=1)
    # query shapes whose page boundaries are remembered (query/resume.py); 0: none
    page_boundaries: int = Field(default=1024, ge=0)
    # a relevance cursor page of the search extension ranks this many pages at once and
    # answers the next ones from that ranking (query/windows.py); 1: every page ranks
    relevance_window_pages: int = Field(default=20, ge=1, le=50)
    # ... for searches matching at least this many artifacts (fewer: ranking is cheap)
    relevance_window_min_matches: int = Field(default=20_000, ge=0)
    # a walk's next window is ranked in the background before it is asked for ...
    relevance_rank_ahead: bool = True
    # ... from the page that leaves this many pages of the current window or fewer to
    # answer (0: from the page that uses it up)
    relevance_rank_ahead_pages: int = Field(default=10, ge=0, le=50)
    # once a cursor page is answered, the walk's next page is fetched in the background
    # and answered from that when asked; at most this many kept at once (0: none)
    pages_ahead: int = Field(default=64, ge=0, le=10_000)
    # searches ask Elasticsearch's shard request cache (query/repository.py); false: only
    # Elasticsearch's default (searches without hits)
    request_cache: bool = True
    auth_string: SecretStr | None = None
    api_keys: list[SecretStr] = Field(default_factory=list)
    # where the search page links runs to (the Prefect UI's base URL)
    prefect_ui_url: str = Field(default="http://127.0.0.1:4200", pattern=r"^https?://")
    # where saved searches may send webhooks: the alerts worker's setting, read by the API
    # so a URL the worker would refuse is a 422 when the search is saved (alerts/egress.py)
    webhook_allowed_hosts: str = Field(default="", validation_alias="ALERTS_WEBHOOK_ALLOWED_HOSTS")


class BackfillSettings(BaseSettings):
    """`backfill-prefect`: where the Prefect database is and how fast to publish.

    Every field can also be given as a command-line option (`--dsn`, `--chunk-size`, ...),
    which wins and is held to the field's constraints (`artifact_search/cli.py`).
    """

    model_config = SettingsConfigDict(env_prefix="BACKFILL_", extra="ignore")

    postgres_dsn: SecretStr | None = None
    chunk_size: int = Field(default=1000, ge=1, le=100_000)
    max_events_per_second: float = Field(default=0.0, ge=0)
    checkpoint: str = "prefect-backfill.checkpoint.json"


class SyncSettings(BaseSettings):
    """`sync-prefect`: the Prefect database (CDC mode) or API (API mode), pacing, metrics.

    Most fields can also be given as a command-line option (`sync-prefect --help`), which
    wins and is held to the field's constraints (`artifact_search/cli.py`).
    """

    model_config = SettingsConfigDict(env_prefix="SYNC_", extra="ignore")

    postgres_dsn: SecretStr | None = None
    slot: str = Field(default="artifact_search", pattern=r"^[a-z0-9_]{1,54}$")
    publication: str = Field(default="artifact_search", min_length=1, max_length=63)
    schema_name: str = Field(default="public", min_length=1, max_length=63)
    state_file: str = "prefect-sync.state.json"
    max_in_flight: int = Field(default=10_000, ge=1, le=1_000_000)
    snapshot_chunk: int = Field(default=1000, ge=1, le=100_000)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9465, ge=0, le=65535)
    # the API mode (Prefect Cloud, or a server without database access)
    api_url: str | None = None
    api_key: SecretStr | None = None
    api_auth_string: SecretStr | None = None
    api_state_file: str = "prefect-sync-api.sqlite"
    api_requests_per_second: float = Field(default=20.0, gt=0, le=10_000)
    reconcile_interval_s: float = Field(default=300.0, ge=1, le=86_400)
    reconcile_full_every: int = Field(default=12, ge=1, le=100_000)
    reconcile_overlap_s: float = Field(default=600.0, ge=0, le=86_400)


class LoggingSettings(BaseSettings):
    """Log level and format of every command."""

    model_config = SettingsConfigDict(env_prefix="LOG_", extra="ignore")

    level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    format: str = Field(default="json", pattern="^(json|text)$")

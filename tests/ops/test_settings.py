"""Settings: environment parsing, failures that name the variable, secrets that never leak."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from services.config import (
    BackfillSettings,
    ElasticsearchSettings,
    IndexerSettings,
    KafkaSettings,
    LoggingSettings,
    QuerySettings,
)
from services.logging import JsonFormatter, configure_logging, correlation

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Value-9f2c"
PREFIXES = ("KAFKA_", "ELASTICSEARCH_", "INDEXER_", "QUERY_", "BACKFILL_", "LOG_")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(PREFIXES):
            monkeypatch.delenv(name)
    return monkeypatch


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
    return subprocess.run(
        [sys.executable, "-m", "artifact_search.cli", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_environment_variables_are_parsed(clean_env: pytest.MonkeyPatch) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "KAFKA_TOPIC_PREFIX": "stage.",
        "KAFKA_PARTITIONS": "12",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "ELASTICSEARCH_URL": "https://es.internal:9200/",
        "ELASTICSEARCH_NUMBER_OF_SHARDS": "3",
        "INDEXER_MAX_BATCH": "500",
        "INDEXER_METRICS_PORT": "0",
        "QUERY_PORT": "8080",
        "QUERY_API_KEYS": '["a", "b"]',
        "BACKFILL_MAX_EVENTS_PER_SECOND": "250.5",
        "BACKFILL_POSTGRES_DSN": "postgresql://u:p@db/prefect",
        "LOG_LEVEL": "DEBUG",
    }
    for name, value in env.items():
        clean_env.setenv(name, value)
    kafka = KafkaSettings()
    assert kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert kafka.partitions == 12
    assert kafka.topic_for("flow_run") == "stage.prefect.flow-runs"
    assert kafka.dlq_topic == "stage.prefect.dlq"
    assert kafka.sasl_mechanism == "SCRAM-SHA-512"
    es = ElasticsearchSettings()
    assert es.url == "https://es.internal:9200"  # trailing slash stripped
    assert es.number_of_shards == 3
    assert IndexerSettings().max_batch == 500
    assert IndexerSettings().metrics_port == 0
    query = QuerySettings()
    assert query.port == 8080
    assert [k.get_secret_value() for k in query.api_keys] == ["a", "b"]
    backfill = BackfillSettings()
    assert backfill.max_events_per_second == 250.5
    assert backfill.postgres_dsn is not None
    assert backfill.postgres_dsn.get_secret_value() == "postgresql://u:p@db/prefect"
    assert LoggingSettings().level == "DEBUG"


def test_defaults_match_the_readme(clean_env: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text()
    kafka, es, query = KafkaSettings(), ElasticsearchSettings(), QuerySettings()
    for name, value in [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers),
        ("KAFKA_GROUP_ID", kafka.group_id),
        ("ELASTICSEARCH_URL", es.url),
        ("ELASTICSEARCH_INDEX_PREFIX", es.index_prefix),
        ("QUERY_DEFAULT_LIMIT", str(query.default_limit)),
        ("BACKFILL_MAX_EVENTS_PER_SECOND", "0"),
        ("INDEXER_METRICS_PORT", str(IndexerSettings().metrics_port)),
        ("INDEXER_STATE_CACHE_ENTRIES", str(IndexerSettings().state_cache_entries)),
        ("ELASTICSEARCH_REFRESH_INTERVAL", es.refresh_interval),
        ("INDEXER_DEFER_MAX_S", "30"),
    ]:
        row = next(
            (ln for ln in readme.splitlines() if ln.startswith("|") and f"`{name}`" in ln), None
        )
        assert row is not None, f"{name} is not in the README's configuration table"
        assert value in row, f"README default of {name} is not {value}: {row}"


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("bootstrap", "ELASTICSEARCH_URL", "ftp://nowhere"),
        ("bootstrap", "KAFKA_PARTITIONS", "zero"),
        ("bootstrap", "KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("indexer", "INDEXER_MAX_BATCH", "0"),
        ("api", "QUERY_PORT", "99999"),
        ("api", "QUERY_API_KEYS", "not-json"),
        ("backfill-prefect", "BACKFILL_CHUNK_SIZE", "-1"),
        ("bootstrap", "LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_values_stop_the_command_naming_the_variable(
    command: str, variable: str, value: str
) -> None:
    proc = _cli(command, **{variable: value, "ELASTICSEARCH_API_KEY": SECRET})
    assert proc.returncode == 1, proc.stderr
    assert "invalid configuration" in proc.stderr
    assert variable in proc.stderr
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    if variable != "LOG_LEVEL":
        assert value not in proc.stderr  # values are never echoed (they may be secrets)


def test_secrets_never_appear_in_reprs(clean_env: pytest.MonkeyPatch) -> None:
    objects = [
        KafkaSettings(sasl_username="u", sasl_password=SECRET),
        ElasticsearchSettings(api_key=SECRET, username="u", password=SECRET),
        QuerySettings(auth_string=SECRET, api_keys=[SECRET]),
        BackfillSettings(postgres_dsn=f"postgresql://u:{SECRET}@db/prefect"),
    ]
    for obj in objects:
        assert SECRET not in repr(obj)
        assert SECRET not in str(obj)
        assert SECRET not in obj.model_dump_json()
        assert SECRET not in str(obj.model_dump())


def test_secrets_never_appear_in_json_logs() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.ops.secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        settings = ElasticsearchSettings(api_key=SECRET)
        with correlation("abc123"):
            logger.warning("settings %s", settings, extra={"settings": settings})
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                logger.exception("failed", extra={"key": settings.api_key})
    finally:
        logger.removeHandler(handler)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert SECRET not in stream.getvalue()
    assert [line["correlation_id"] for line in lines] == ["abc123", "abc123"]
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "test.ops.secrets"
    assert "boom" in lines[1]["exc"]


def test_configure_logging_writes_json_lines_with_the_correlation_id() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        with correlation() as cid:
            logging.getLogger("ops-test").info("hello", extra={"n": 1})
        logging.getLogger("ops-test").info("outside")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines()[-2:])
    assert first["correlation_id"] == cid and first["n"] == 1 and first["msg"] == "hello"
    assert "correlation_id" not in second

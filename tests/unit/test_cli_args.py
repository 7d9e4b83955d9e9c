"""Command-line values are validated before anything runs, by the settings' own constraints
(pydantic-settings' CLI, `artifact_search/cli.py`); flags override the environment."""

from __future__ import annotations

import os
import time

import pytest
from pydantic_settings import BaseSettings

from artifact_search.cli import (
    BackfillCommand,
    ReplayCommand,
    SyncCommand,
    command_name,
    parse,
    subcommand_flags,
)
from datagen.__main__ import build_parser as build_datagen_parser
from services.backfill import RateLimiter
from services.config import BackfillSettings, ElasticsearchSettings, IndexerSettings, SyncSettings

SECRET = "s3cr3t-Value-9f2c"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("SYNC_", "BACKFILL_", "QUERY_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["backfill-prefect", "--chunk-size", "-5"], "--chunk-size: Input should be greater"),
        (["backfill-prefect", "--chunk-size", "0"], "--chunk-size: Input should be greater"),
        (["backfill-prefect", "--chunk-size", "100001"], "--chunk-size: Input should be less"),
        (["backfill-prefect", "--chunk-size", "ten"], "--chunk-size: Input should be a valid int"),
        (["backfill-prefect", "--max-events-per-second", "-1"], "--max-events-per-second:"),
        (["backfill-prefect", "--max-events-per-second", "nan"], "--max-events-per-second:"),
        (["backfill-prefect", "--entities", "flow,runs"], "--entities: Value error, unknown runs"),
        (["api", "--port", "70000"], "api: --port: Input should be less than or equal to 65535"),
        (["api", "--port", "0"], "api: --port: Input should be greater than or equal to 1"),
        (["replay", "--batch-size", "0"], "--batch-size: Input should be greater"),
        (["replay", "--shards", "0"], "--shards: Input should be greater"),
        (["replay", "--replicas", "-1"], "--replicas: Input should be greater"),
        (["sync-prefect", "--max-in-flight", "0"], "--max-in-flight: Input should be greater"),
        (["sync-prefect", "--snapshot-chunk", "100001"], "--snapshot-chunk: Input should be less"),
        (["sync-prefect", "--metrics-port", "-1"], "--metrics-port: Input should be greater"),
        (["sync-prefect", "--slot", "Bad-Name"], "--slot: String should match pattern"),
        (["sync-prefect", "--publication", ""], "--publication: String should have at least"),
        (["sync-prefect", "--requests-per-second", "0"], "--requests-per-second: Input should"),
        (["sync-prefect", "--reconcile-interval", "0.5"], "--reconcile-interval: Input should"),
        (["replay", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        ([], "a subcommand is required"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_a_bad_secret_flag_is_named_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["sync-prefect", "--dsn", SECRET, "--max-in-flight", "0"])
    err = capsys.readouterr().err
    assert "--max-in-flight" in err and SECRET not in err


def test_valid_values_parse_and_unset_flags_are_none() -> None:
    backfill = parse(["backfill-prefect", "--chunk-size", "7", "--max-events-per-second", "0.5"])
    assert isinstance(backfill.backfill_prefect, BackfillCommand)
    assert (
        backfill.backfill_prefect.chunk_size,
        backfill.backfill_prefect.max_events_per_second,
    ) == (
        7,
        0.5,
    )
    assert backfill.backfill_prefect.checkpoint is None  # the environment's value
    assert backfill.backfill_prefect.entities == "flow,deployment,flow_run,task_run,artifact"
    assert command_name(backfill) == "backfill-prefect"
    replay = parse(["replay", "--replicas", "0", "--keep-old"]).replay
    assert isinstance(replay, ReplayCommand)
    assert (replay.replicas, replay.keep_old, replay.shards, replay.batch_size) == (
        0,
        True,
        None,
        None,
    )
    assert parse(["replay"]).replay == ReplayCommand()
    api = parse(["api", "--port", "65535"])
    assert api.api is not None and api.api.port == 65535 and api.api.host is None
    produce = parse(["produce", "events.jsonl"])
    assert produce.produce is not None and produce.produce.file == "events.jsonl"


def test_flags_override_the_environment_and_the_rest_comes_from_it(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("SYNC_MAX_IN_FLIGHT", "50")
    clean_env.setenv("SYNC_SNAPSHOT_CHUNK", "20")
    clean_env.setenv("SYNC_API_URL", "http://env:4200/api")
    clean_env.setenv("SYNC_STATE_FILE", "env.json")
    root = parse(
        ["sync-prefect", "--max-in-flight", "7", "--auth-string", SECRET, "--state-file", ""]
    )
    assert isinstance(root.sync_prefect, SyncCommand)
    settings = root.sync_prefect.settings()
    assert settings.max_in_flight == 7  # the flag wins
    assert settings.snapshot_chunk == 20  # no flag: the environment's
    assert settings.api_url == "http://env:4200/api"
    assert settings.api_auth_string is not None
    assert settings.api_auth_string.get_secret_value() == SECRET
    assert (settings.state_file, settings.api_state_file) == ("", "")  # "" disables it
    assert settings.slot == "artifact_search"  # neither: the default
    assert SECRET not in repr(root)


def test_without_flags_the_settings_are_the_environments(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SYNC_METRICS_PORT", "0")
    root = parse(["sync-prefect"])
    assert root.sync_prefect is not None
    assert root.sync_prefect.settings() == SyncSettings()
    assert SyncSettings().metrics_port == 0


@pytest.mark.parametrize(
    ("command", "flag", "settings", "field"),
    [
        (SyncCommand, name, SyncSettings, name)
        for name in SyncCommand.model_fields
        if name not in ("recreate_slot", "drop_slot")
    ]
    + [
        (BackfillCommand, name, BackfillSettings, name)
        for name in ("postgres_dsn", "checkpoint", "chunk_size", "max_events_per_second")
    ]
    + [
        (ReplayCommand, "batch_size", IndexerSettings, "max_batch"),
        (ReplayCommand, "shards", ElasticsearchSettings, "number_of_shards"),
        (ReplayCommand, "replicas", ElasticsearchSettings, "number_of_replicas"),
    ],
)
def test_a_flag_has_its_settings_type_and_constraints(
    command: type[object], flag: str, settings: type[BaseSettings], field: str
) -> None:
    option = command.model_fields[flag]  # type: ignore[attr-defined]
    setting = settings.model_fields[field]
    assert option.annotation == setting.annotation | None
    assert option.metadata == setting.metadata
    assert option.default is None


def test_every_subcommand_and_flag_keeps_its_name() -> None:
    flags = subcommand_flags()
    assert set(flags) == {
        "api",
        "indexer",
        "alerts",
        "bootstrap",
        "produce",
        "replay",
        "backfill-prefect",
        "sync-prefect",
    }
    assert flags["api"] == {"-h", "--help", "--host", "--port"}
    assert flags["replay"] == {
        "-h",
        "--help",
        "--batch-size",
        "--keep-old",
        "--shards",
        "--replicas",
    }
    assert flags["backfill-prefect"] == {
        *("-h", "--help", "--dsn", "--checkpoint", "--chunk-size", "--max-events-per-second"),
        *("--entities", "--restart"),
    }
    assert flags["sync-prefect"] == {
        *("-h", "--help", "--api-url", "--api-key", "--auth-string", "--requests-per-second"),
        *("--reconcile-interval", "--dsn", "--slot", "--publication", "--state-file"),
        *("--recreate-slot", "--drop-slot", "--max-in-flight", "--snapshot-chunk"),
        "--metrics-port",
    }
    assert flags["produce"] == flags["indexer"] == {"-h", "--help"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--artifacts", "0"], "must be at least 1"),
        (["demo", "--seed", "-1"], "must be at least 0"),
        (["demo", "--seed", "x"], "'x' is not an integer"),
    ],
)
def test_datagen_values_are_usage_errors(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_datagen_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


async def test_the_rate_limiter_lets_a_burst_through_then_paces() -> None:
    unlimited = RateLimiter(0)
    started = time.monotonic()
    await unlimited.take(10**9)
    burst = RateLimiter(100)
    await burst.take(100)  # one second's worth goes at once
    assert time.monotonic() - started < 1.0
    await burst.take(150)  # more than the bucket holds: paced, in drips
    assert time.monotonic() - started >= 1.2

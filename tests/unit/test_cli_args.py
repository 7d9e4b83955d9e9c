"""Command-line values are validated before anything runs (argparse types, usage errors)."""

from __future__ import annotations

import time

import pytest

from artifact_search.cli import build_parser
from datagen.__main__ import build_parser as build_datagen_parser
from services.backfill import RateLimiter


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["backfill-prefect", "--chunk-size", "-5"], "-5 must be at least 1"),
        (["backfill-prefect", "--chunk-size", "0"], "0 must be at least 1"),
        (["backfill-prefect", "--chunk-size", "ten"], "'ten' is not an integer"),
        (["backfill-prefect", "--max-events-per-second", "-1"], "must be at least 0"),
        (["backfill-prefect", "--max-events-per-second", "nan"], "must be at least 0"),
        (["api", "--port", "70000"], "at most 65535"),
        (["api", "--port", "0"], "must be at least 1"),
        (["replay", "--batch-size", "0"], "must be at least 1"),
        (["replay", "--shards", "0"], "must be at least 1"),
        (["replay", "--replicas", "-1"], "must be at least 0"),
        (["sync-prefect", "--max-in-flight", "0"], "must be at least 1"),
        (["sync-prefect", "--snapshot-chunk", "100001"], "at most 100000"),
        (["sync-prefect", "--metrics-port", "-1"], "must be at least 0"),
        (["sync-prefect", "--slot", "Bad-Name"], "lowercase letters, digits"),
        (["sync-prefect", "--requests-per-second", "0"], "must be at least 0.1"),
        (["sync-prefect", "--reconcile-interval", "0.5"], "must be at least 1"),
    ],
)
def test_out_of_range_values_are_usage_errors(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_valid_values_parse() -> None:
    args = build_parser().parse_args(
        ["backfill-prefect", "--chunk-size", "7", "--max-events-per-second", "0.5"]
    )
    assert (args.chunk_size, args.max_events_per_second) == (7, 0.5)
    assert build_parser().parse_args(["replay", "--replicas", "0"]).replicas == 0
    assert build_parser().parse_args(["api", "--port", "65535"]).port == 65535


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

"""Endpoint bodies: FastAPI-style top-level leniency, strict filters, Prefect's limit rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from services.prefect.requests import (
    DEFAULT_LIMIT,
    ArtifactCollectionCountRequest,
    ArtifactCollectionReadRequest,
    ArtifactCountRequest,
    ArtifactReadRequest,
    InvalidLimitError,
    check_limit,
    parse_count_request,
    parse_read_request,
)
from services.prefect.sorting import ArtifactCollectionSort, ArtifactSort


def test_defaults() -> None:
    req = parse_read_request(ArtifactReadRequest, None)
    assert (req.sort, req.offset, req.limit) == (ArtifactSort.ID_DESC, 0, DEFAULT_LIMIT)
    assert req.artifacts is None and req.flow_runs is None and req.task_runs is None
    assert req.flows is None and req.deployments is None
    coll = parse_read_request(ArtifactCollectionReadRequest, {})
    assert coll.sort is ArtifactCollectionSort.ID_DESC


def test_null_means_default() -> None:
    body = {"sort": None, "offset": None, "limit": None, "artifacts": None, "flows": None}
    req = parse_read_request(ArtifactReadRequest, body)
    assert (req.sort, req.offset, req.limit, req.artifacts) == (
        ArtifactSort.ID_DESC,
        0,
        DEFAULT_LIMIT,
        None,
    )


def test_unknown_top_level_keys_are_ignored_but_not_inside_filters() -> None:
    req = parse_read_request(ArtifactReadRequest, {"whatever": 1, "artifacts": {}})
    assert req.artifacts is not None
    with pytest.raises(ValidationError):
        parse_read_request(ArtifactReadRequest, {"artifacts": {"whatever": 1}})
    with pytest.raises(ValidationError):
        parse_count_request(ArtifactCountRequest, {"flow_runs": {"name": {"nope": []}}})
    count = parse_count_request(ArtifactCountRequest, {"sort": "garbage", "limit": -5})
    assert count.artifacts is None


@pytest.mark.parametrize("limit", [0, 1, 200, "7"])
def test_limit_in_range(limit: Any) -> None:
    assert parse_read_request(ArtifactReadRequest, {"limit": limit}).limit == int(limit)


@pytest.mark.parametrize(
    ("limit", "detail"),
    [
        (-1, "Invalid limit: must be greater than or equal to 0."),
        (201, "Invalid limit: must be less than or equal to 200."),
    ],
)
def test_limit_out_of_range_is_reported_first(limit: int, detail: str) -> None:
    body = {"limit": limit, "offset": -3, "artifacts": {"bad": 1}}
    with pytest.raises(InvalidLimitError) as info:
        parse_read_request(ArtifactReadRequest, body)
    assert info.value.detail == detail


def test_limit_bound_is_a_parameter() -> None:
    assert parse_read_request(ArtifactReadRequest, {}, default_limit=50).limit == 50
    assert parse_read_request(ArtifactReadRequest, {"limit": 500}, default_limit=1000).limit == 500
    with pytest.raises(InvalidLimitError):
        parse_read_request(ArtifactCollectionReadRequest, {"limit": 51}, default_limit=50)
    # the context also works through plain model validation
    req = ArtifactReadRequest.model_validate({}, context={"default_limit": 10})
    assert req.limit == 10
    with pytest.raises(ValidationError):
        ArtifactReadRequest.model_validate({"limit": 11}, context={"default_limit": 10})


def test_non_integer_limit_is_a_field_error_with_the_others() -> None:
    with pytest.raises(ValidationError) as info:
        parse_read_request(ArtifactReadRequest, {"limit": "x", "offset": -1})
    assert {e["loc"][0] for e in info.value.errors()} == {"limit", "offset"}


@pytest.mark.parametrize("offset", [-1, "a", 1.5])
def test_bad_offsets(offset: Any) -> None:
    with pytest.raises(ValidationError):
        parse_read_request(ArtifactReadRequest, {"offset": offset})


def test_offset_has_no_upper_bound() -> None:
    assert parse_read_request(ArtifactReadRequest, {"offset": 10**9}).offset == 10**9


def test_bad_sort() -> None:
    with pytest.raises(ValidationError):
        parse_read_request(ArtifactReadRequest, {"sort": "NAME_ASC"})
    assert parse_read_request(ArtifactReadRequest, {"sort": "KEY_ASC"}).sort is ArtifactSort.KEY_ASC


def test_collection_bodies_take_collection_filters() -> None:
    coll = parse_count_request(ArtifactCollectionCountRequest, {"artifacts": {"latest_id": {}}})
    assert coll.artifacts is not None
    with pytest.raises(ValidationError):
        parse_count_request(ArtifactCountRequest, {"artifacts": {"latest_id": {}}})
    with pytest.raises(ValidationError):
        parse_count_request(ArtifactCollectionCountRequest, {"artifacts": {"id": {}}})


def test_naive_datetimes_in_bodies_are_utc() -> None:
    req = parse_count_request(
        ArtifactCountRequest, {"task_runs": {"start_time": {"after_": "2024-05-06T07:08:09"}}}
    )
    assert req.task_runs is not None and req.task_runs.start_time is not None
    after = req.task_runs.start_time.after_
    assert after is not None and after.utcoffset() is not None
    assert after.isoformat() == "2024-05-06T07:08:09+00:00"


def test_non_object_body_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_read_request(ArtifactReadRequest, [1, 2])


def test_check_limit() -> None:
    assert check_limit(None, 200) == 200
    assert check_limit(0, 200) == 0
    with pytest.raises(InvalidLimitError):
        check_limit(-1, 200)


def test_errors_come_in_prefects_parameter_order() -> None:
    body = {"deployments": {"x": 1}, "artifacts": 3, "offset": -1, "sort": "BAD", "limit": "x"}
    with pytest.raises(ValidationError) as info:
        parse_read_request(ArtifactReadRequest, body)
    assert [e["loc"][0] for e in info.value.errors()] == [
        "limit",
        "sort",
        "offset",
        "artifacts",
        "deployments",
    ]
    # a filter that is not an object is FastAPI's from_attributes error
    assert info.value.errors()[3]["type"] == "model_attributes_type"


@pytest.mark.parametrize("body", [[], "x", 1, False, ""])
def test_a_non_object_body_misses_every_parameter(body: Any) -> None:
    with pytest.raises(ValidationError) as info:
        parse_read_request(ArtifactReadRequest, body)
    errors = info.value.errors()
    assert {e["type"] for e in errors} == {"missing"}
    assert [e["loc"][0] for e in errors][:3] == ["limit", "sort", "offset"]
    with pytest.raises(ValidationError) as info:
        parse_count_request(ArtifactCollectionCountRequest, body)
    assert len(info.value.errors()) == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-W01-1", "2024-01-01T00:00:00+00:00"),
        ("2024-001", "2024-01-01T00:00:00+00:00"),
        ("20240102T030405", "2024-01-02T03:04:05+00:00"),
        ("2024-01-01T00:00:00+0100", "2024-01-01T00:00:00+01:00"),
    ],
)
def test_timestamps_pendulum_accepts(value: str, expected: str) -> None:
    req = parse_count_request(ArtifactCountRequest, {"flow_runs": {"end_time": {"after_": value}}})
    assert req.flow_runs is not None and req.flow_runs.end_time is not None
    after = req.flow_runs.end_time.after_
    assert after is not None and type(after) is datetime and after.isoformat() == expected


@pytest.mark.parametrize(
    ("value", "msg"),
    [
        ("garbage", "Value error, Unable to parse string [garbage]"),
        (
            "P1D",
            "Value error, value is not a valid datetime it is a "
            "<class 'pendulum.duration.Duration'>",
        ),
        (1e30, "value is not a valid datetime"),
        (True, "value is not a valid datetime"),
    ],
)
def test_timestamp_errors_are_prefects(value: Any, msg: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_count_request(ArtifactCountRequest, {"flow_runs": {"end_time": {"after_": value}}})
    (error,) = info.value.errors()
    assert (error["type"], error["msg"]) == ("value_error", msg)

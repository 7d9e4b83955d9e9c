"""The `created` histogram (query/histogram.py): calendar months and years from day
buckets, bucket counts and their bound, empty ranges refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import ApiError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from query.extension import SearchRequest, build_body, read_facets
from query.histogram import MAX_BUCKETS, count_buckets, read_buckets
from query.repository import _search_error
from services.documents import to_micros
from services.errors import TranslationError


def _day_buckets(*moments: str) -> list[dict[str, Any]]:
    """What a day histogram answers for these times: one bucket per day, in order."""
    days: dict[int, int] = {}
    for text in moments:
        micros = to_micros(datetime.fromisoformat(text))
        start = micros // 86_400_000_000 * 86_400_000_000
        days[start] = days.get(start, 0) + 1
    return [{"key": float(k), "doc_count": v} for k, v in sorted(days.items())]


EDGES = (
    "2020-02-29T12:00:00+00:00",
    "2023-12-31T23:59:59.999999+00:00",
    "2024-01-31T23:59:59.999999+00:00",
    "2024-02-01T00:00:00+00:00",
    "2024-02-29T23:59:59.999999+00:00",
    "2024-03-01T00:00:00+00:00",
    "2024-12-31T23:59:59.999999+00:00",
    "2025-01-01T00:00:00+00:00",
)


def test_months_and_years_add_up_days_at_calendar_boundaries() -> None:
    assert read_buckets(_day_buckets(*EDGES), "month") == [
        ("2020-02-01T00:00:00Z", 1),
        ("2023-12-01T00:00:00Z", 1),
        ("2024-01-01T00:00:00Z", 1),
        ("2024-02-01T00:00:00Z", 2),
        ("2024-03-01T00:00:00Z", 1),
        ("2024-12-01T00:00:00Z", 1),
        ("2025-01-01T00:00:00Z", 1),
    ]
    assert read_buckets(_day_buckets(*EDGES), "year") == [
        ("2020-01-01T00:00:00Z", 1),
        ("2023-01-01T00:00:00Z", 1),
        ("2024-01-01T00:00:00Z", 5),
        ("2025-01-01T00:00:00Z", 1),
    ]


def test_the_request_asks_for_days_when_months_or_years_are_wanted() -> None:
    for width, interval in (("month", 86_400_000_000), ("year", 86_400_000_000)):
        req = SearchRequest.model_validate({"facets": ["created"], "histogram": width})
        agg = build_body(req, first_page=True)["aggs"]["created"]["histogram"]
        assert agg == {
            "field": "created_us",
            "interval": interval,
            "offset": 0,
            "min_doc_count": 1,
        }
    req = SearchRequest.model_validate({"facets": ["created"], "histogram": "month"})
    resp = {"aggregations": {"created": {"v": {"buckets": _day_buckets(*EDGES[4:6])}}}}
    facets = read_facets(resp, req)
    assert facets is not None
    assert [(b.value, b.count) for b in facets["created"]] == [
        ("2024-02-01T00:00:00Z", 1),
        ("2024-03-01T00:00:00Z", 1),
    ]


def _floor(moment: datetime, width: str) -> datetime:
    """The start of the bucket holding `moment`, by the calendar (independent of the code)."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "hour": moment.replace(minute=0, second=0, microsecond=0),
        "day": day,
        "week": day - timedelta(days=day.weekday()),
        "month": day.replace(day=1),
        "year": day.replace(month=1, day=1),
    }[width]


def _next(start: datetime, width: str) -> datetime:
    if width == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    if width == "year":
        return start.replace(year=start.year + 1)
    return start + {"hour": timedelta(hours=1), "day": timedelta(days=1)}.get(
        width, timedelta(days=7)
    )


@settings(deadline=None, max_examples=60)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=200)),
    st.sampled_from(["hour", "day", "week", "month", "year"]),
)
def test_count_buckets_counts_the_calendar_buckets_touched(
    start: datetime, span: timedelta, width: Any
) -> None:
    after = start.replace(tzinfo=UTC)
    before = after + span
    touched, bucket = 0, _floor(after, width)
    while bucket < before:
        touched += 1
        bucket = _next(bucket, width)
    assert count_buckets(after, before, width) == touched


def test_too_many_buckets_are_refused_before_and_after_searching() -> None:
    wide = {"after": "2020-01-01T00:00:00Z", "before": "2021-01-01T00:00:00Z"}
    req = SearchRequest.model_validate(
        {"facets": ["created"], "histogram": "hour", "created": wide}
    )
    with pytest.raises(TranslationError, match=r"8,784 hour buckets \(at most 2,000\)"):
        build_body(req, first_page=True)
    ok = SearchRequest.model_validate({"facets": ["created"], "histogram": "day", "created": wide})
    assert "aggs" in build_body(ok, first_page=True)
    many = [{"key": float(i * 3_600_000_000), "doc_count": 1} for i in range(MAX_BUCKETS + 1)]
    with pytest.raises(TranslationError, match="wider histogram"):
        read_buckets(many, "hour")
    assert len(read_buckets(many[:MAX_BUCKETS], "hour")) == MAX_BUCKETS


def test_a_range_that_ends_before_it_starts_is_refused() -> None:
    for field in ("created", "updated"):
        with pytest.raises(ValidationError, match="is later than before"):
            SearchRequest.model_validate(
                {field: {"after": "2024-02-01T00:00:00Z", "before": "2024-01-01T00:00:00Z"}}
            )
    same = {"after": "2024-01-01T00:00:00Z", "before": "2024-01-01T00:00:00Z"}
    SearchRequest.model_validate({"created": same})  # empty, but not backwards


def test_elasticsearch_bucket_limit_is_a_clear_refusal() -> None:
    meta = ApiResponseMeta(400, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "h", 9200))
    body = {
        "error": {
            "root_cause": [],
            "type": "search_phase_execution_exception",
            "reason": "",
            "caused_by": {"type": "too_many_buckets_exception", "reason": "Trying to create"},
        },
        "status": 400,
    }
    err = _search_error(ApiError("search_phase_execution_exception", meta, body))
    assert type(err) is TranslationError and "too many buckets" in str(err)

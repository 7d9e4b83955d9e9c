"""The search extension's pure parts (query/extension.py): query strings, bodies, cursors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from query.extension import (
    CursorError,
    SearchRequest,
    build_body,
    decode_cursor,
    encode_cursor,
    read_facets,
    sort_of,
)
from query.query_string import rewrite_fields
from services.errors import TranslationError
from services.search_text import encode_micros, encode_number


@pytest.mark.parametrize(
    ("q", "want"),
    [
        ("revenue", "revenue"),
        ("data:emea", "x.data:emea"),
        ("key:sales AND type:table", "x.key:sales AND type:table"),
        (
            "(data:emea OR metadata:owner) -state:FAILED",
            "(x.data:emea OR x.metadata:owner) -fr.state_type:FAILED",
        ),
        ('"data:not a field" description:x', '"data:not a field" x.description:x'),
        (r"key\:colon", r"key\:colon"),
        ("_exists_:metadata", "_exists_:x.metadata"),
        ("tags:(prod OR dev)", "fr.tags:(prod OR dev)"),
        ("+flow:etl !deployment:d", "+flow.name:etl !dep.name:d"),
    ],
)
def test_user_fields_become_index_fields(q: str, want: str) -> None:
    assert rewrite_fields(q) == want


@pytest.mark.parametrize(
    "q", ["live:false", "_id:x", "fr.name:x", "version:1", "https://x.y", "_exists_:live"]
)
def test_fields_outside_the_searchable_ones_are_refused(q: str) -> None:
    with pytest.raises(TranslationError, match="Searchable fields"):
        rewrite_fields(q)


def test_an_unclosed_quote_is_refused() -> None:
    with pytest.raises(TranslationError, match="unclosed quote"):
        rewrite_fields('"revenue grew')


def _filters(body: dict[str, Any]) -> list[Any]:
    return list(body["query"]["bool"]["filter"])


def test_a_search_is_always_inside_the_prefect_filter() -> None:
    req = SearchRequest.model_validate(
        {
            "q": "revenue",
            "prefect_filter": {
                "flow_runs": {"id": {"any_": ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]}}
            },
            "created": {"after": "2024-02-01T00:00:00Z", "before": "2024-06-01T00:00:00+00:00"},
        }
    )
    body = build_body(req, first_page=True)
    filters = _filters(body)
    assert {"term": {"live": True}} in filters
    assert any("fr.id" in str(f) for f in filters)
    start = int(datetime(2024, 2, 1, tzinfo=UTC).timestamp()) * 1_000_000
    end = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp()) * 1_000_000
    assert {"range": {"created_us": {"gte": start, "lt": end}}} in filters
    assert body["query"]["bool"]["must"][0]["query_string"]["query"] == "revenue"
    assert "highlight" in body and "aggs" not in body


def test_the_mode_and_its_filter_must_agree() -> None:
    with pytest.raises(TranslationError, match="latest_per_key"):
        build_body(SearchRequest.model_validate({"prefect_latest_filter": {}}), first_page=True)
    with pytest.raises(TranslationError, match="prefect_latest_filter"):
        build_body(
            SearchRequest.model_validate({"latest_per_key": True, "prefect_filter": {}}),
            first_page=True,
        )
    with pytest.raises(TranslationError, match="latest_id"):
        build_body(SearchRequest.model_validate({"fields": ["latest_id"]}), first_page=True)


def test_invalid_requests_are_refused_by_the_model() -> None:
    for bad in (
        {"limit": 201},
        {"limit": -1},
        {"sort": [{"field": "score"}]},
        {"facets": ["colour"]},
        {"selected": {"created": ["2024"]}},
        {"created": {"after": "2024-01-01T00:00:00"}},  # no time zone
        {"unknown": 1},
        {"prefect_filter": {"artifacts": {"nope": {}}}},
    ):
        with pytest.raises(ValidationError):
            SearchRequest.model_validate(bad)


def test_sorts_default_to_relevance_with_a_query_else_newest_first() -> None:
    tiebreak = [{"id_hi": {"order": "desc"}}, {"id_lo": {"order": "desc"}}]
    assert sort_of(SearchRequest(q="x")) == [{"_score": {"order": "desc"}}, *tiebreak]
    assert sort_of(SearchRequest()) == [
        {"created_us": {"order": "desc", "missing": "_first"}},
        *tiebreak,
    ]
    asc = SearchRequest.model_validate({"sort": [{"field": "flow_name", "order": "asc"}]})
    assert sort_of(asc)[0] == {"flow.name": {"order": "asc", "missing": "_last"}}


def test_multi_select_facets_count_under_the_other_selections() -> None:
    req = SearchRequest.model_validate(
        {
            "facets": ["type", "flow", "created"],
            "selected": {"type": ["markdown", "table"], "flow": ["etl"]},
            "histogram": "week",
        }
    )
    body = build_body(req, first_page=True)
    type_sel = {"terms": {"type": ["markdown", "table"]}}
    flow_sel = {"terms": {"flow.name": ["etl"]}}
    assert body["post_filter"] == {"bool": {"filter": [flow_sel, type_sel]}}
    assert body["aggs"]["type"]["filter"] == {"bool": {"filter": [flow_sel]}}
    assert body["aggs"]["flow"]["filter"] == {"bool": {"filter": [type_sel]}}
    assert body["aggs"]["created"]["filter"] == {"bool": {"filter": [flow_sel, type_sel]}}
    histogram = body["aggs"]["created"]["aggs"]["v"]["histogram"]
    assert histogram["interval"] == 7 * 86_400_000_000
    assert datetime.fromtimestamp(histogram["offset"] / 1e6, UTC).weekday() == 0  # Monday
    assert "aggs" not in build_body(req, first_page=False)  # facets on the first page only
    # a facet with no other facet's selection to count under is the plain aggregation
    only_type = SearchRequest.model_validate(
        {"facets": ["type", "flow"], "selected": {"type": ["table"]}}
    )
    aggs = build_body(only_type, first_page=True)["aggs"]
    assert aggs["type"] == {"terms": {"field": "type", "size": 10}}
    assert aggs["flow"]["filter"] == {"bool": {"filter": [{"terms": {"type": ["table"]}}]}}


def test_facet_buckets_are_read_back() -> None:
    req = SearchRequest.model_validate({"facets": ["type", "created"]})
    resp = {
        "aggregations": {
            "type": {"v": {"buckets": [{"key": "markdown", "doc_count": 3}]}},
            "created": {"v": {"buckets": [{"key": 1_704_067_200_000_000.0, "doc_count": 2}]}},
        }
    }
    facets = read_facets(resp, req)
    assert facets is not None
    assert [(b.value, b.count) for b in facets["type"]] == [("markdown", 3)]
    assert [(b.value, b.count) for b in facets["created"]] == [("2024-01-01T00:00:00Z", 2)]
    # the same buckets from unwrapped aggregations (no selection to count under)
    for name in ("type", "created"):
        resp["aggregations"][name] = resp["aggregations"][name]["v"]
    assert read_facets(resp, req) == facets


def test_cursors_round_trip_and_are_bound_to_their_search() -> None:
    req = SearchRequest(q="revenue", limit=2)
    cursor = encode_cursor("pit-1", [1.5, 3, 4], req)
    assert decode_cursor(cursor, SearchRequest(q="revenue", limit=2, cursor=cursor)) == (
        "pit-1",
        [1.5, 3, 4],
    )
    with pytest.raises(CursorError, match="another search"):
        decode_cursor(cursor, SearchRequest(q="other", limit=2))
    for garbage in ("", "!!!", "e30", encode_cursor("p", [], req)[:-3]):
        with pytest.raises(CursorError):
            decode_cursor(garbage, req)


def _where(*conditions: dict[str, Any]) -> list[Any]:
    req = SearchRequest.model_validate({"where": list(conditions)})
    return _filters(build_body(req, first_page=True))[1:]


def test_typed_conditions_become_terms_and_prefix_bounded_ranges() -> None:
    n = encode_number
    assert _where({"field": "metadata.owner", "op": "eq", "value": "ml-team"}) == [
        {"term": {"v.s": "metadata.owner\x00ml-team"}}
    ]
    assert _where({"field": "data.accuracy", "op": "gte", "value": 0.9}) == [
        {"range": {"v.n": {"lt": "data.accuracy\x01", "gte": "data.accuracy\x00" + n(0.9)}}}
    ]
    assert _where({"field": "data", "op": "lt", "value": 50}) == [
        {"range": {"v.n": {"gte": "data\x00", "lt": "data\x00" + n(50)}}}
    ]
    at = encode_micros(1_704_067_200_000_000)
    assert _where({"field": "metadata.run_at", "op": "gt", "value": "2024-01-01T00:00:00Z"}) == [
        {"range": {"v.d": {"lt": "metadata.run_at\x01", "gt": "metadata.run_at\x00" + at}}}
    ]
    assert _where({"field": "metadata.threshold", "op": "lte", "value": "0.5"}) == [
        {
            "range": {
                "v.n": {"gte": "metadata.threshold\x00", "lte": "metadata.threshold\x00" + n(0.5)}
            }
        }
    ]
    assert _where({"field": "data.ok", "op": "eq", "value": True}) == [
        {"term": {"v.b": "data.ok\x00true"}}
    ]
    assert _where({"field": "data.region", "op": "in", "value": ["emea", 3]}) == [
        {
            "bool": {
                "should": [
                    {"term": {"v.s": "data.region\x00emea"}},
                    {"term": {"v.n": "data.region\x00" + n(3)}},
                ],
                "minimum_should_match": 1,
            }
        }
    ]
    assert _where({"field": "metadata.owner", "op": "exists"}) == [
        {"term": {"v.k": "metadata.owner"}}
    ]


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        ({"field": "data.x", "op": "gt", "value": "abc"}, "numbers or timestamps"),
        ({"field": "data.x", "op": "gt", "value": True}, "numbers or timestamps"),
        ({"field": "data.x", "op": "in", "value": []}, "non-empty list"),
        ({"field": "data.x", "op": "in", "value": "a"}, "non-empty list"),
        ({"field": "data.x", "op": "eq"}, "one value"),
        ({"field": "data.x", "op": "exists", "value": 1}, "no value"),
    ],
)
def test_conditions_that_make_no_sense_are_refused(condition: dict[str, Any], says: str) -> None:
    with pytest.raises(TranslationError, match=says):
        _where(condition)


def test_condition_fields_are_metadata_or_data() -> None:
    for bad in ("owner", "fr.name", "metadatax.a", "data.\x00", "live"):
        with pytest.raises(ValidationError):
            SearchRequest.model_validate({"where": [{"field": bad, "op": "exists"}]})

"""Saved searches, the change feed and alert identity: the pure parts of alerts/."""

from __future__ import annotations

import ast
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from alerts.model import (
    SavedSearchIn,
    alert_id,
    alert_message,
    check_saved_search,
    combined_body,
    evaluation_body,
    evaluation_query,
    index_source,
    latest_ids,
    not_visible,
    query_fingerprint,
    read_matches,
    read_saved_search,
    saved_search_doc,
    split_combined,
    visibility_body,
)
from query.extension import SearchRequest
from services.changes import BadChangeRecordError, decode_changes, encode_changes, merge_changes
from services.errors import TranslationError

ROOT = Path(__file__).resolve().parents[2]


def _saved(search: dict[str, object], **extra: object) -> SavedSearchIn:
    return SavedSearchIn.model_validate({"name": "n", "search": search, **extra})


def test_a_saved_search_holds_a_search_body_validated_by_the_search_model() -> None:
    saved = _saved({"q": "revenue", "where": [{"field": "metadata.acc", "op": "gte", "value": 1}]})
    assert saved.search.q == "revenue"
    with pytest.raises(ValidationError):
        _saved({"q": "x", "unknown": 1})
    with pytest.raises(ValidationError):
        _saved({"limit": 10_000})
    with pytest.raises(ValidationError):
        SavedSearchIn.model_validate({"name": "", "search": {}})
    with pytest.raises(ValidationError):
        _saved({}, webhook={"url": "ftp://example/x"})
    with pytest.raises(ValidationError):
        _saved({}, owner="me")


@pytest.mark.parametrize(
    ("search", "words"),
    [
        ({"cursor": "abc"}, "cursor"),
        ({"latest_per_key": True, "prefect_filter": {}}, "prefect_latest_filter"),
        ({"prefect_latest_filter": {}}, "needs latest_per_key"),
        ({"q": "nosuchfield:x"}, "Unknown field"),
        ({"fields": ["latest_id"]}, "Not a field"),
        ({"where": [{"field": "metadata.a", "op": "in", "value": []}]}, "non-empty list"),
    ],
)
def test_what_a_saved_search_cannot_hold_is_refused(search: dict[str, object], words: str) -> None:
    with pytest.raises(TranslationError, match=words):
        check_saved_search(_saved(search))


def test_the_existing_scan_is_owed_per_fingerprint_and_kept_across_a_rename() -> None:
    body = _saved({"q": "revenue"}, notify_existing=True)
    fresh = saved_search_doc("s", body, "t", "t")
    assert fresh.existing_scan == "pending"
    source = index_source(fresh, 1)
    assert "existing_scan" not in source and "scanned_fingerprint" not in source
    assert read_saved_search(source).existing_scan == "pending"
    scanned = index_source(fresh, 1, scanned=fresh.fingerprint)
    assert read_saved_search(scanned).existing_scan == "done"
    renamed = saved_search_doc(
        "s", _saved({"q": "revenue"}, notify_existing=True, name="m"), "t", "u", fresh.fingerprint
    )
    assert renamed.existing_scan == "done"
    requery = saved_search_doc(
        "s", _saved({"q": "costs"}, notify_existing=True), "t", "u", fresh.fingerprint
    )
    assert requery.existing_scan == "pending"
    quiet = saved_search_doc("s", _saved({"q": "revenue"}), "t", "t")
    assert quiet.existing_scan is None and not quiet.notify_existing
    assert read_saved_search(index_source(quiet, 1)).existing_scan is None


def test_the_fingerprint_follows_what_matches_not_the_presentation() -> None:
    base = SearchRequest(q="revenue", where=[])
    same = SearchRequest(
        q="revenue",
        limit=5,
        sort=[{"field": "key", "order": "asc"}],
        fields=["id"],
        facets=["type"],
        highlight=False,
    )
    other = SearchRequest(q="revenue OR sales")
    selected = SearchRequest(q="revenue", selected={"type": ["table"]})
    assert query_fingerprint(base) == query_fingerprint(same)
    assert query_fingerprint(base) != query_fingerprint(other)
    assert query_fingerprint(base) != query_fingerprint(selected)


def test_latest_per_key_is_part_of_the_fingerprint_only_when_set() -> None:
    artifacts = SearchRequest(q="revenue")
    latest = SearchRequest(q="revenue", latest_per_key=True)
    assert query_fingerprint(artifacts) != query_fingerprint(latest)
    # artifacts-mode fingerprints are what they were before latest_per_key could be saved
    # (stored searches keep alerting under the same identity)
    assert query_fingerprint(artifacts) == "2e42dc17e4cff3b67538b84e"
    keyed = SearchRequest.model_validate(
        {
            "q": "revenue",
            "latest_per_key": True,
            "prefect_latest_filter": {"artifacts": {"key": {"any_": ["k"]}}},
        }
    )
    assert query_fingerprint(keyed) != query_fingerprint(latest)


def test_alert_ids_are_deterministic_and_distinguish_every_part() -> None:
    one = alert_id("s", "f", "a", 1)
    assert one == alert_id("s", "f", "a", 1)
    assert (
        len(
            {
                one,
                alert_id("s2", "f", "a", 1),
                alert_id("s", "f2", "a", 1),
                alert_id("s", "f", "a2", 1),
                alert_id("s", "f", "a", 2),
            }
        )
        == 5
    )
    # the separator keeps adjacent parts from running into each other
    assert alert_id("ab", "f", "c", 1) != alert_id("a", "f", "bc", 1)


def test_stored_form_round_trips() -> None:
    body = _saved(
        {"q": "x", "prefect_filter": {"flows": {"name": {"any_": ["etl"]}}}},
        webhook={"url": "http://127.0.0.1:9/hook"},
        description="d",
    )
    saved = saved_search_doc("id-1", body, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
    source = orjson.loads(orjson.dumps(index_source(saved, 5)))
    assert source["created_us"] == 5
    assert read_saved_search(source) == saved
    assert saved.fingerprint == query_fingerprint(body.search)


def test_change_records_round_trip_in_bounded_chunks_and_merge_to_the_highest_version() -> None:
    pairs = [(f"id-{i}", i) for i in range(1_201)]
    collections = [(f"c-{i}", i) for i in range(501)]
    values = encode_changes(pairs, collections, per_record=500)
    assert len(values) == 5
    decoded = [decode_changes(v) for v in values]
    assert [p for a, _ in decoded for p in a] == pairs
    assert [p for _, c in decoded for p in c] == collections
    # a record of a release before collections were announced
    assert decode_changes(b'{"a": [["x", 2]]}') == ([("x", 2)], [])
    assert merge_changes([("a", 3), ("b", 1), ("a", 7), ("a", 5)]) == {"a": 7, "b": 1}
    for bad in (
        b"",
        b"[]",
        b'{"a": [["x"]]}',
        b'{"a": [["x", "nan"]]}',
        b'{"a": [], "c": [["x"]]}',
        None,
        b"\xff",
    ):
        with pytest.raises(BadChangeRecordError):
            decode_changes(bad)


def test_visibility_compares_searchable_versions_with_the_changes() -> None:
    body = visibility_body(["a", "b", "c"])
    assert body["query"] == {"ids": {"values": ["a", "b", "c"]}} and body["version"] is True
    resp = {"hits": {"hits": [{"_id": "a", "_version": 5}, {"_id": "b", "_version": 2}]}}
    # a: newer than the change (superseded meanwhile); b: older (not refreshed); c: absent
    assert not_visible({"a": 4, "b": 3, "c": 1}, resp) == {"b", "c"}
    assert not_visible({"a": 5}, resp) == set()


def test_evaluation_is_the_saved_search_anded_with_the_ids() -> None:
    body = _saved({"q": "revenue", "selected": {"type": ["markdown"]}, "fields": ["key"]})
    saved = saved_search_doc("s1", body, "t", "t")
    req = evaluation_body(saved, ["a", "b"])
    clauses = req["query"]["bool"]
    assert clauses["filter"][0] == {"ids": {"values": ["a", "b"]}}
    assert clauses["filter"][1] == {"terms": {"type": ["markdown"]}}
    must = clauses["must"][0]["bool"]
    assert must["must"][0]["query_string"]["query"] == "revenue"
    assert {"term": {"live": True}} in must["filter"]
    assert req["size"] == 2 and set(req["_source"]["includes"]) == {"id", "key", "version"}


def test_a_combined_evaluation_looks_the_ids_up_once_and_names_each_saved_search() -> None:
    one = saved_search_doc("s1", _saved({"q": "revenue", "fields": ["key"]}), "t", "t")
    two = saved_search_doc("s2", _saved({"q": "costs", "selected": {"type": ["table"]}}), "t", "t")
    req = combined_body([one, two], ["a", "b"])
    clauses = req["query"]["bool"]
    assert clauses["filter"] == [{"ids": {"values": ["a", "b"]}}]
    assert clauses["minimum_should_match"] == 1
    # each clause is the saved search's own query, named by its position
    for n, search in enumerate((one, two)):
        named = evaluation_query(search)
        named["bool"]["_name"] = str(n)
        assert clauses["should"][n] == named
    assert req["size"] == 2 and req["version"] is True
    assert set(req["_source"]["includes"]) >= set(
        evaluation_body(two, ["a"])["_source"]["includes"]
    )
    hits = [
        {
            "_id": "a",
            "_version": 3,
            "_source": {"id": "a", "key": "k", "version": 1},
            "matched_queries": ["0", "1"],
        },
        {
            "_id": "b",
            "_version": 4,
            "_source": {"id": "b", "key": "j", "version": 2},
            "matched_queries": ["1"],
        },
    ]
    (s1, r1), (s2, r2) = split_combined([one, two], {"hits": {"hits": hits}})
    assert (s1, s2) == (one, two)
    assert [m.artifact_id for m in read_matches(one, r1)] == ["a"]
    assert [m.artifact_id for m in read_matches(two, r2)] == ["a", "b"]
    # each saved search's alert carries its own fields only
    assert read_matches(one, r1)[0].artifact == {"key": "k"}


def test_matches_carry_the_selected_fields_and_the_artifact_version() -> None:
    saved = saved_search_doc("s1", _saved({"fields": ["key"]}), "t", "t")
    resp = {
        "hits": {
            "hits": [
                {"_id": "a1", "_version": 99, "_source": {"id": "a1", "key": "k", "version": 7}}
            ]
        }
    }
    (match,) = read_matches(saved, resp)
    assert (match.artifact_id, match.artifact_version, match.document_version) == ("a1", 7, 99)
    assert match.artifact == {"key": "k"}
    assert match.alert_id == alert_id("s1", saved.fingerprint, "a1", 7)
    message = alert_message(match, saved, "2026-01-01T00:00:00Z")
    assert message.saved_search.id == "s1" and message.alert_id == match.alert_id


def test_latest_per_key_matches_are_the_latest_artifact_at_its_version() -> None:
    saved = saved_search_doc(
        "s1", _saved({"latest_per_key": True, "q": "revenue", "fields": ["key"]}), "t", "t"
    )
    req = evaluation_body(saved, ["c1", "c2"])
    assert req["query"]["bool"]["filter"][0] == {"ids": {"values": ["c1", "c2"]}}
    assert set(req["_source"]["includes"]) == {"id", "key", "latest_id"}
    hit = {"_id": "c1", "_version": 40, "_source": {"id": "c1", "key": "k", "latest_id": "a9"}}
    gone = {"_id": "c2", "_version": 3, "_source": {"id": "c2", "key": "j", "latest_id": "a8"}}
    resp = {"hits": {"hits": [hit, gone]}}
    assert latest_ids(saved, resp) == ["a9", "a8"]
    # a8's version is unknown (deleted meanwhile): no match for it
    (match,) = read_matches(saved, resp, {"a9": 12})
    assert (match.artifact_id, match.artifact_version, match.document_version) == ("a9", 12, 40)
    assert match.alert_id == alert_id("s1", saved.fingerprint, "a9", 12)
    assert match.artifact == {"key": "k"} and match.latest_per_key
    message = alert_message(match, saved, "2026-01-01T00:00:00Z")
    assert message.latest_per_key and message.artifact_id == "a9"


def test_pure_modules_import_no_io_library() -> None:
    for path in ("alerts/model.py", "alerts/egress.py", "services/changes.py"):
        tree = ast.parse((ROOT / path).read_text())
        names = {
            (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        roots = {n.split(".")[0] for n in names}
        assert not roots & {"elasticsearch", "aiokafka", "faststream", "httpx"}, path


def test_checked_in_alerts_asyncapi_matches_the_code() -> None:
    from alerts.asyncapi import DEFAULT_PATH, asyncapi_json

    assert DEFAULT_PATH.read_text() == asyncapi_json(), (
        "docs/asyncapi-alerts.json is stale: run `python -m alerts.asyncapi`"
    )
    spec = orjson.loads(asyncapi_json())
    addresses = {c["address"] for c in spec["channels"].values()}
    assert addresses == {"prefect.indexer.artifact-changes", "prefect.alerts", "prefect.alerts.dlq"}
    schemas = spec["components"]["schemas"]
    assert {"alert_id", "saved_search", "artifact_id", "artifact_version"} <= set(
        schemas["AlertMessage"]["required"]
    )


def test_a_claim_is_abandoned_only_when_pending_past_its_timeout() -> None:
    from alerts.model import is_abandoned

    assert is_abandoned({"state": "pending", "claimed_us": 100}, now_us=200, claim_timeout_us=100)
    assert not is_abandoned({"state": "pending", "claimed_us": 101}, 200, 100)
    assert not is_abandoned({"state": "published", "claimed_us": 0}, 200, 100)

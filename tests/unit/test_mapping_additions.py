"""`mapping_additions`: what an index of an earlier schema can take, and what differs."""

from __future__ import annotations

from typing import Any

from services.es.indices import (
    ARTIFACTS_MAPPING,
    COLLECTIONS_MAPPING,
    SCHEMA_META,
    SCHEMA_VERSION,
    mapping_additions,
    outdated_indices,
)

KW: dict[str, Any] = {"type": "keyword"}


def test_the_same_mapping_adds_nothing_and_differs_nowhere() -> None:
    props = ARTIFACTS_MAPPING["properties"]
    assert mapping_additions(props, props) == ({}, [])


def test_missing_fields_are_added_also_inside_objects() -> None:
    have = {"a": KW, "o": {"dynamic": "strict", "properties": {"b": KW}}}
    want = {
        "a": KW,
        "n": {"type": "long"},
        "o": {"type": "object", "dynamic": "strict", "properties": {"b": KW, "c": KW}},
    }
    additions, differing = mapping_additions(have, want)
    assert additions == {
        "n": {"type": "long"},
        "o": {"type": "object", "dynamic": "strict", "properties": {"c": KW}},
    }
    assert differing == []


def test_a_field_defined_otherwise_is_reported_by_its_path_and_not_sent() -> None:
    have = {"x": {"properties": {"key": {"type": "text"}, "data": {"type": "keyword"}}}}
    want = {
        "x": {
            "type": "object",
            "properties": {
                "key": {"type": "text", "index_phrases": True},
                "data": {"type": "text"},
            },
        }
    }
    assert mapping_additions(have, want) == ({}, ["x.key", "x.data"])


def test_a_parameter_set_on_the_live_field_only_is_a_difference_too() -> None:
    have = {"k": {"type": "keyword", "ignore_above": 256}}
    assert mapping_additions(have, {"k": KW}) == ({}, ["k"])


def test_outdated_indices_are_those_without_this_schema_version() -> None:
    answer = {
        "p-artifacts-v4": {"mappings": {"_meta": {SCHEMA_META: SCHEMA_VERSION}}},
        "p-artifacts-v9": {"mappings": {"_meta": {SCHEMA_META: SCHEMA_VERSION + 1}}},
        "p-collections-v3": {"mappings": {"dynamic": "strict"}},  # before `_meta`
        "p-collections-v5": {"mappings": {"_meta": {SCHEMA_META: SCHEMA_VERSION - 1}}},
        "p-odd": {"mappings": {"_meta": {SCHEMA_META: "4"}}},
    }
    assert outdated_indices(answer) == ["p-collections-v3", "p-collections-v5", "p-odd"]
    assert (
        ARTIFACTS_MAPPING["_meta"] == COLLECTIONS_MAPPING["_meta"] == {SCHEMA_META: SCHEMA_VERSION}
    )

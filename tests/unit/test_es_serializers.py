"""The Elasticsearch client's orjson serializers and their standard-library fallback."""

from __future__ import annotations

import json

from services.es.client import OrjsonJson, OrjsonNdjson


def test_plain_values_round_trip() -> None:
    body = {"query": {"terms": {"key": ["a", "ключ"]}}, "size": 200, "x": [1.5, None, True]}
    assert json.loads(OrjsonJson().dumps(body)) == body
    assert OrjsonJson().loads(b'{"a": [1, 2]}') == {"a": [1, 2]}


def test_values_orjson_refuses_fall_back_to_the_standard_library() -> None:
    lone_surrogate = {"terms": {"key": ["\ud800"]}}
    assert OrjsonJson().dumps(lone_surrogate) == b'{"terms":{"key":["\\ud800"]}}'
    huge = {"value": 2**70}
    assert json.loads(OrjsonJson().dumps(huge)) == huge


def test_ndjson_lines() -> None:
    out = OrjsonNdjson().dumps([{"index": {"_id": "1"}}, {"a": 1}])
    assert out == b'{"index":{"_id":"1"}}\n{"a":1}\n'
    assert OrjsonNdjson().loads(out) == [{"index": {"_id": "1"}}, {"a": 1}]

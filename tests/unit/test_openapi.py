"""The OpenAPI document of Prefect's artifact routes (query/openapi.py), without servers.

The answers' schemas are compared with Prefect 3.9.1's own response models (a test
dependency), field by field; that real answers validate against them is checked on
Elasticsearch (tests/e2e/test_search_extension.py), and that bodies generated from the
request schemas are accepted by the service in tests/reliability/test_api_abuse.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prefect.server.schemas import core as prefect_core
from pydantic import BaseModel

from query.app import create_app
from query.openapi import PREFECT_ROUTES, Artifact, ArtifactCollection
from services.config import ElasticsearchSettings, QuerySettings
from services.documents import ARTIFACT_RESPONSE_FIELDS, COLLECTION_RESPONSE_FIELDS

JSON = "application/json"


def _document(default_limit: int = 200) -> dict[str, Any]:
    app = create_app(QuerySettings(default_limit=default_limit), ElasticsearchSettings())
    return app.openapi()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_of_the_document_resolves() -> None:
    doc = _document()
    refs = set(_refs(doc))
    assert "#/components/schemas/ArtifactReadRequest" in refs
    assert "#/components/schemas/InvalidRequest" in refs
    for ref in refs:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_each_prefect_route_has_its_body_answer_and_errors() -> None:
    doc = _document()
    answers: dict[str, dict[str, Any]] = {
        "/api/artifacts/filter": {"type": "array", "items": {"$ref": "Artifact"}},
        "/api/artifacts/count": {"type": "integer"},
        "/api/artifacts/latest/filter": {"type": "array", "items": {"$ref": "ArtifactCollection"}},
        "/api/artifacts/latest/count": {"type": "integer"},
    }
    assert {route.path for route in PREFECT_ROUTES} == set(answers)
    ids = set()
    for path, want in answers.items():
        op = doc["paths"][path]["post"]
        ids.add(op["operationId"])
        assert op["tags"] == ["prefect"] and op["summary"] != "Run"
        body = op["requestBody"]
        assert body["required"] is False
        assert body["content"][JSON]["schema"]["$ref"].rsplit("/", 1)[1].endswith("Request")
        schema = op["responses"]["200"]["content"][JSON]["schema"]
        assert schema["type"] == want["type"]
        if "items" in want:
            assert schema["items"]["$ref"].rsplit("/", 1)[1] == want["items"]["$ref"]
        assert {"400", "413", "422", "503"} <= set(op["responses"])
    assert len(ids) == 4
    for path, what in (
        ("/api/artifacts/{artifact_id}", "Artifact"),
        ("/api/artifacts/{key}/latest", "Artifact"),
    ):
        op = doc["paths"][path]["get"]
        assert op["responses"]["200"]["content"][JSON]["schema"]["$ref"].endswith("/" + what)
        assert op["responses"]["404"]["content"][JSON]["schema"]["$ref"].endswith("/Detail")
        assert "422" not in op["responses"]  # any string is a valid id or key: never a 422


@pytest.mark.parametrize("limit", [1, 50, 200, 1000])
def test_the_documented_limit_is_the_configured_one(limit: int) -> None:
    schemas = _document(limit)["components"]["schemas"]
    for name in ("ArtifactReadRequest", "ArtifactCollectionReadRequest"):
        got = schemas[name]["properties"]["limit"]
        assert (got["minimum"], got["maximum"], got["default"]) == (0, limit, limit)
    assert "limit" not in schemas["ArtifactCountRequest"]["properties"]


def _takes_null(schema: dict[str, Any]) -> bool:
    if "anyOf" in schema:
        return any(_takes_null(option) for option in schema["anyOf"])
    if {"$ref", "enum", "const"} & set(schema):
        return False
    return schema.get("type") in (None, "null")  # no type at all: any value


def _fields(model: type[BaseModel]) -> dict[str, bool]:
    """Field name -> whether JSON null is a valid value (from the model's own schema)."""
    return {
        name: _takes_null(prop) for name, prop in model.model_json_schema()["properties"].items()
    }


@pytest.mark.parametrize(
    ("ours", "prefects"),
    [(Artifact, prefect_core.Artifact), (ArtifactCollection, prefect_core.ArtifactCollection)],
)
def test_the_answers_are_described_as_prefect_describes_them(
    ours: type[BaseModel], prefects: type[BaseModel]
) -> None:
    mine, theirs = _fields(ours), _fields(prefects)
    assert set(mine) == set(theirs)
    for name, nullable in mine.items():
        if name in ("created", "updated"):  # optional in Prefect's model, always answered
            assert not nullable
            continue
        assert nullable == theirs[name], name


@pytest.mark.parametrize(
    ("model", "read"),
    [(Artifact, ARTIFACT_RESPONSE_FIELDS), (ArtifactCollection, COLLECTION_RESPONSE_FIELDS)],
)
def test_the_answers_are_described_with_the_fields_the_service_reads(
    model: type[BaseModel], read: tuple[str, ...]
) -> None:
    """The document's models repeat the response fields of `services/documents.py` (what
    the handlers take from `_source`): a field added to one must be added to the other."""
    assert list(model.model_fields) == list(read)

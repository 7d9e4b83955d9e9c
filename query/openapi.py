"""PURE: the OpenAPI description of Prefect's artifact routes (`/api/artifacts/...`).

Those routes read and validate their bodies themselves (query/app.py: Prefect's decoding,
its validation order and its error bodies), so FastAPI sees a bare `Request` and, left to
itself, documents neither a body nor an answer. This module says what they take and what
they answer, for `/docs`, `/openapi.json` and any generated client:

- `route_docs`: the keyword arguments of `add_api_route` for one route (summary,
  description, the responses with their schemas, the request body by reference);
- `complete_document`: the request models' schemas put into the document's components
  (the references of `route_docs` point there), with `limit` bounded as the service
  bounds it (`QUERY_DEFAULT_LIMIT`), and the 422 FastAPI lists for the GET routes dropped.

The response models below describe the answers; the routes never build them (the
documents come from Elasticsearch already in Prefect's shape and are written as they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from services.prefect.requests import (
    ArtifactCollectionCountRequest,
    ArtifactCollectionReadRequest,
    ArtifactCountRequest,
    ArtifactReadRequest,
)

COMPONENTS = "#/components/schemas/"
PREFECT_TAG = "prefect"


class Artifact(BaseModel):
    """An artifact as Prefect 3.9.1 answers it."""

    id: UUID
    created: datetime = Field(description="When the artifact was created (UTC).")
    updated: datetime = Field(description="When the artifact was last changed (UTC).")
    key: str | None = Field(
        None,
        description="The key; artifacts that share one form a "
        "collection, whose latest member `/api/artifacts/latest/...` answers.",
    )
    type: str | None = Field(
        None,
        description="`markdown`, `table`, `link`, `progress`, "
        "`image`, `result` or any other string the producer chose.",
    )
    description: str | None = Field(None, description="Markdown text.")
    data: Any = Field(None, description="The content; its shape depends on `type`.")
    metadata_: dict[str, str] | None = Field(None, description="String keys and values.")
    flow_run_id: UUID | None = Field(None, description="The flow run that made it.")
    task_run_id: UUID | None = Field(None, description="The task run that made it.")


class ArtifactCollection(BaseModel):
    """The latest artifact of a key, as Prefect 3.9.1 answers it."""

    id: UUID = Field(description="The collection's own id (not the artifact's).")
    created: datetime = Field(description="When the collection was created (UTC).")
    updated: datetime = Field(description="When its latest artifact last changed (UTC).")
    key: str
    latest_id: UUID = Field(description="The id of the key's latest artifact.")
    type: str | None = None
    description: str | None = None
    data: Any = None
    metadata_: dict[str, str] | None = None
    flow_run_id: UUID | None = None
    task_run_id: UUID | None = None


class Detail(BaseModel):
    """An error in one sentence."""

    detail: str


class InvalidRequest(BaseModel):
    """Prefect's answer to a body that does not validate."""

    exception_message: str = Field(examples=["Invalid request received."])
    exception_detail: list[dict[str, Any]] = Field(
        description="One entry per problem: `type`, `loc` (from `body`), `msg`, `input`."
    )
    request_body: Any = Field(description="The body as it was received.")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ArtifactReadRequest,
    ArtifactCountRequest,
    ArtifactCollectionReadRequest,
    ArtifactCollectionCountRequest,
)


@dataclass(frozen=True)
class PrefectRoute:
    """One of Prefect's four POST routes over artifacts."""

    path: str
    operation_id: str
    request: type[BaseModel]
    answer: Any
    summary: str
    description: str


_FILTERS = (
    "The body is Prefect's: `artifacts`, `flow_runs`, `task_runs`, `flows` and "
    "`deployments` filter objects, all optional and combined with AND. Unknown keys at "
    "the top level are ignored, unknown keys inside a filter are refused, `null` means "
    "absent, and an empty or non-JSON body matches everything (as in Prefect)."
)
_WINDOW = (
    " `sort` is one of Prefect's orders (default `ID_DESC`); `offset` (default 0) and "
    "`limit` (default and maximum: `QUERY_DEFAULT_LIMIT`) page through it; a limit "
    "out of range is a 422 with `detail`."
)

PREFECT_ROUTES: tuple[PrefectRoute, ...] = (
    PrefectRoute(
        "/api/artifacts/filter",
        "read_artifacts",
        ArtifactReadRequest,
        list[Artifact],
        "Artifacts matching Prefect's filters (Prefect's route)",
        "The same answer as Prefect 3.9.1's route for the same body. " + _FILTERS + _WINDOW,
    ),
    PrefectRoute(
        "/api/artifacts/count",
        "count_artifacts",
        ArtifactCountRequest,
        int,
        "How many artifacts match Prefect's filters (Prefect's route)",
        "The same answer as Prefect 3.9.1's route for the same body. " + _FILTERS,
    ),
    PrefectRoute(
        "/api/artifacts/latest/filter",
        "read_latest_artifacts",
        ArtifactCollectionReadRequest,
        list[ArtifactCollection],
        "The latest artifact of each key, matching Prefect's filters (Prefect's route)",
        "The same answer as Prefect 3.9.1's route for the same body: one entry per key, "
        "its latest artifact; `artifacts` filters those latest artifacts. " + _FILTERS + _WINDOW,
    ),
    PrefectRoute(
        "/api/artifacts/latest/count",
        "count_latest_artifacts",
        ArtifactCollectionCountRequest,
        int,
        "How many keys' latest artifacts match Prefect's filters (Prefect's route)",
        "The same answer as Prefect 3.9.1's route for the same body. " + _FILTERS,
    ),
)


def _errors() -> dict[int | str, dict[str, Any]]:
    return {
        400: {"model": Detail, "description": "The body is not text in a JSON encoding."},
        413: {"model": Detail, "description": "The body exceeds `QUERY_MAX_BODY_BYTES`."},
        422: {
            "description": "The body does not validate: Prefect's error body, or `detail` "
            "for a limit out of range.",
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"$ref": COMPONENTS + InvalidRequest.__name__},
                            {"$ref": COMPONENTS + Detail.__name__},
                        ]
                    }
                }
            },
        },
        503: {"model": Detail, "description": "Elasticsearch cannot answer."},
    }


def route_docs(route: PrefectRoute) -> dict[str, Any]:
    """The `add_api_route` keyword arguments that document `route`."""
    return {
        "summary": route.summary,
        "description": route.description,
        "operation_id": route.operation_id,
        "tags": [PREFECT_TAG],
        "responses": {
            200: {"model": route.answer, "description": "The answer, as Prefect gives it."},
            **_errors(),
        },
        "openapi_extra": {
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {"schema": {"$ref": COMPONENTS + route.request.__name__}}
                },
            }
        },
    }


READ_PATHS = ("/api/artifacts/{artifact_id}", "/api/artifacts/{key}/latest")
"""Prefect's two GET routes: a path parameter any string fits (an id that is not a UUID is
a 404, as in Prefect), so never a 422."""


def read_docs(answer: type[BaseModel], missing: str) -> dict[str, Any]:
    """The decorator keyword arguments of a GET route answering `answer`, or a 404 whose
    meaning is `missing`."""
    return {
        "tags": [PREFECT_TAG],
        "responses": {
            200: {"model": answer, "description": "The artifact, as Prefect gives it."},
            404: {"model": Detail, "description": missing},
            503: {"model": Detail, "description": "Elasticsearch cannot answer."},
        },
    }


def request_schemas(default_limit: int) -> dict[str, Any]:
    """The component schemas of the request models (and of every model they use) and of
    Prefect's error body, named as FastAPI names them, with `limit` bounded by the
    configured default limit."""
    _, top = models_json_schema(
        [(model, "validation") for model in REQUEST_MODELS]
        + [(InvalidRequest, "serialization")],  # referenced by the 422 answers' `anyOf`
        ref_template=COMPONENTS + "{model}",
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    for model in REQUEST_MODELS:
        limit = schemas[model.__name__].get("properties", {}).get("limit")
        if limit is not None:
            limit.update(
                minimum=0,
                maximum=default_limit,
                default=default_limit,
                description="How many to answer (`QUERY_DEFAULT_LIMIT` at most).",
            )
    return schemas


def complete_document(document: dict[str, Any], default_limit: int) -> dict[str, Any]:
    """`document` with the schemas of `request_schemas` among its components, and without
    the 422 FastAPI lists for the GET routes, which never answer one (in place).

    A schema FastAPI already put there under the same name (the search extension's
    `prefect_filter` uses the count requests and the filter models) is kept: it is the
    same model's, and FastAPI's own references point to it."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in request_schemas(default_limit).items():
        components.setdefault(name, schema)
    for path in READ_PATHS:  # FastAPI lists a 422 for any route with a path parameter
        document.get("paths", {}).get(path, {}).get("get", {}).get("responses", {}).pop("422", None)
    return document

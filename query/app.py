"""The query service's composition root: FastAPI routes under `/api`.

Bodies are decoded with orjson and validated by the request models; search
results come back from Elasticsearch already in Prefect's response shape and
are serialized with orjson without re-validation. Errors map to Prefect's
statuses: invalid body -> 422, unknown id/key -> 404, Elasticsearch down -> 503.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import ValidationError

from query.repository import Repository
from query.sort import sort_clauses
from query.translate import translate_artifact_query, translate_collection_query
from services.config import ElasticsearchSettings, QuerySettings
from services.errors import BackendUnavailableError
from services.es.client import make_es_client
from services.es.indices import IndexNames
from services.prefect.requests import (
    ArtifactCollectionCountRequest,
    ArtifactCollectionReadRequest,
    ArtifactCountRequest,
    ArtifactReadRequest,
    InvalidLimitError,
    parse_count_request,
    parse_read_request,
)

REQUESTS = Counter("query_requests_total", "HTTP requests", ["endpoint", "status"])
LATENCY = Histogram(
    "query_request_seconds",
    "Request latency",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
ES_LATENCY = Histogram("query_elasticsearch_seconds", "Time spent in Elasticsearch", ["op"])

JSON = "application/json"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON)


def _validation_body(errors: Sequence[Mapping[str, Any]], body: Any) -> dict[str, Any]:
    detail = []
    for err in errors:
        item = {k: v for k, v in err.items() if k in ("type", "loc", "msg", "input", "ctx")}
        item["loc"] = ["body", *err.get("loc", ())]
        if "ctx" in item:
            item["ctx"] = {k: str(v) for k, v in item["ctx"].items()}
        detail.append(item)
    return {
        "exception_message": "Invalid request received.",
        "exception_detail": detail,
        "request_body": body,
    }


class _BadBodyError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _decode(request: Request, max_bytes: int) -> Any:
    raw = await request.body()
    if len(raw) > max_bytes:
        raise _BadBodyError(_json({"detail": f"Request body exceeds {max_bytes} bytes."}, 413))
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise _BadBodyError(
            _json(_validation_body([error], raw.decode("utf-8", "replace")), 422)
        ) from exc


def create_app(query: QuerySettings, es_settings: ElasticsearchSettings) -> FastAPI:
    """Build the API with one Elasticsearch client for the process's lifetime."""
    names = IndexNames(es_settings.index_prefix)
    es = make_es_client(es_settings)
    repo = Repository(es, names, query.max_result_window)
    default_limit = query.default_limit

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await es.close()

    app = FastAPI(title="Prefect artifact search", lifespan=lifespan, docs_url="/docs")
    app.state.repository = repo

    def endpoint(
        name: str, handler: Callable[[Any], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            start = time.perf_counter()
            try:
                body = await _decode(request, query.max_body_bytes)
                response = await handler(body)
            except _BadBodyError as bad:
                response = bad.response
            except InvalidLimitError as exc:
                response = _json({"detail": exc.detail}, 422)
            except ValidationError as exc:
                response = _json(_validation_body(exc.errors(include_url=False), body), 422)
            except BackendUnavailableError as exc:
                response = _json({"detail": str(exc)}, 503)
            LATENCY.labels(name).observe(time.perf_counter() - start)
            REQUESTS.labels(name, str(response.status_code)).inc()
            return response

        return run

    async def read_artifacts(body: Any) -> Response:
        req = parse_read_request(ArtifactReadRequest, body, default_limit=default_limit)
        q = translate_artifact_query(
            req.artifacts, req.flow_runs, req.task_runs, req.flows, req.deployments
        )
        with ES_LATENCY.labels("search").time():
            rows = await repo.search(
                q, sort_clauses(req.sort, collection=False), req.offset, req.limit, False
            )
        return _json(rows)

    async def read_latest(body: Any) -> Response:
        req = parse_read_request(ArtifactCollectionReadRequest, body, default_limit=default_limit)
        q = translate_collection_query(
            req.artifacts, req.flow_runs, req.task_runs, req.flows, req.deployments
        )
        with ES_LATENCY.labels("search").time():
            rows = await repo.search(
                q, sort_clauses(req.sort, collection=True), req.offset, req.limit, True
            )
        return _json(rows)

    async def count_artifacts(body: Any) -> Response:
        req = parse_count_request(ArtifactCountRequest, body)
        q = translate_artifact_query(
            req.artifacts, req.flow_runs, req.task_runs, req.flows, req.deployments
        )
        with ES_LATENCY.labels("count").time():
            return _json(await repo.count(q, False))

    async def count_latest(body: Any) -> Response:
        req = parse_count_request(ArtifactCollectionCountRequest, body)
        q = translate_collection_query(
            req.artifacts, req.flow_runs, req.task_runs, req.flows, req.deployments
        )
        with ES_LATENCY.labels("count").time():
            return _json(await repo.count(q, True))

    app.add_api_route("/api/artifacts/filter", endpoint("filter", read_artifacts), methods=["POST"])
    app.add_api_route("/api/artifacts/count", endpoint("count", count_artifacts), methods=["POST"])
    app.add_api_route(
        "/api/artifacts/latest/filter", endpoint("latest_filter", read_latest), methods=["POST"]
    )
    app.add_api_route(
        "/api/artifacts/latest/count", endpoint("latest_count", count_latest), methods=["POST"]
    )

    @app.get("/api/artifacts/{artifact_id}")
    async def read_artifact(artifact_id: str) -> Response:
        try:
            parsed = uuid.UUID(artifact_id)
        except ValueError:
            return await _by_key_fallback(artifact_id)
        try:
            row = await repo.get_artifact(str(parsed))
        except BackendUnavailableError as exc:
            return _json({"detail": str(exc)}, 503)
        REQUESTS.labels("read", "200" if row else "404").inc()
        return _json(row) if row else _json({"detail": "Artifact not found."}, 404)

    async def _by_key_fallback(_: str) -> Response:
        return _json({"detail": "Not Found"}, 404)

    @app.get("/api/artifacts/{key}/latest")
    async def read_latest_artifact(key: str) -> Response:
        try:
            row = await repo.latest_by_key(key)
        except BackendUnavailableError as exc:
            return _json({"detail": str(exc)}, 503)
        REQUESTS.labels("latest", "200" if row else "404").inc()
        return _json(row) if row else _json({"detail": "Artifact not found."}, 404)

    @app.get("/api/health")
    async def health() -> Response:
        return _json(True)

    @app.get("/api/ready")
    async def ready() -> Response:
        if await repo.ping():
            return _json({"status": "ready"})
        return _json(
            {
                "status": "unavailable",
                "detail": "Elasticsearch or the artifact index is not reachable.",
            },
            503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

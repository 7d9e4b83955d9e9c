"""The query service's composition root: FastAPI routes under `/api`.

Bodies are decoded with the standard `json` module (as Prefect does: orjson would
turn integers beyond 64 bits into floats) and validated by the request models;
search results come back from Elasticsearch already in Prefect's response shape
and are serialized with orjson without re-validation. Errors map to Prefect's
statuses: invalid body -> 422, unknown id/key -> 404, Elasticsearch down -> 503.
"""

from __future__ import annotations

import email.message
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from elasticsearch import AsyncElasticsearch
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.background import BackgroundTask

from query.auth import install_auth
from query.extension import SearchRequest, SearchResponse
from query.openapi import (
    PREFECT_ROUTES,
    READ_PATHS,
    Artifact,
    complete_document,
    read_docs,
    route_docs,
)
from query.repository import CursorExpiredError, Repository
from query.request_id import RequestIdMiddleware
from query.sort import sort_clauses
from query.translate import translate_artifact_query, translate_collection_query
from services.config import ElasticsearchSettings, QuerySettings
from services.errors import BackendUnavailableError, TranslationError
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
from services.telemetry import flush_tracing, instrument_fastapi

REQUESTS = Counter("query_requests_total", "HTTP requests", ["endpoint", "status"])
LATENCY = Histogram(
    "query_request_seconds",
    "Request latency",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
ES_LATENCY = Histogram("query_elasticsearch_seconds", "Time spent in Elasticsearch", ["op"])

JSON = "application/json"


PREFECT_VERSION = "3.9.1"
"""The Prefect server release whose artifact API this service answers."""

PREFECT_API_VERSION = "0.8.4"
"""The REST API version that Prefect release reports on ``GET /api/version``."""

log = logging.getLogger(__name__)


async def _start_all(starts: list[Callable[[], None]]) -> None:
    """Run what a handler deferred until its answer was sent (Starlette's background
    task, on the event loop)."""
    for start in starts:
        start()


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json(payload: Any, status: int = 200) -> Response:
    try:
        content = orjson.dumps(payload)
    except TypeError:  # echoed request bodies: integers beyond 64 bits, lone surrogates
        content = json.dumps(
            _finite(payload), ensure_ascii=True, separators=(",", ":"), allow_nan=False
        ).encode()
    return Response(content, status_code=status, media_type=JSON)


def _validation_body(errors: Sequence[Mapping[str, Any]], body: Any) -> dict[str, Any]:
    """Prefect's 422 body: FastAPI's error list (``loc`` from ``body``, no ``url``)."""
    detail = []
    for err in errors:
        item = {k: err[k] for k in ("type", "loc", "msg", "input", "ctx") if k in err}
        item["loc"] = ["body", *err.get("loc", ())]
        detail.append(item)
    return {
        "exception_message": "Invalid request received.",
        "exception_detail": jsonable_encoder(detail),
        "request_body": jsonable_encoder(body),
    }


class _BadBodyError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _is_json_content(request: Request) -> bool:
    """Whether Prefect's server would decode this body as JSON.

    A JSON (or ``+json``) content type is decoded; any other content type makes
    the body opaque, i.e. every parameter takes its default. Without a content
    type, Prefect assumes JSON when a positive ``Content-Length`` is declared.
    """
    content_type = request.headers.get("content-type")
    if not content_type:
        try:
            return int(request.headers.get("content-length", "0")) > 0
        except ValueError:
            return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def _decode(request: Request, max_bytes: int) -> Any:
    """The body as Prefect decodes it: Python's ``json``, its rules and its errors.

    Not orjson: it turns integers beyond 64 bits into floats and rejects NaN,
    UTF-16/32 and a BOM, all of which Prefect's decoder handles differently.
    """
    raw = await request.body()
    if len(raw) > max_bytes:
        raise _BadBodyError(_json({"detail": f"Request body exceeds {max_bytes} bytes."}, 413))
    if not raw or not _is_json_content(request):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": (exc.pos,),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise _BadBodyError(_json(_validation_body([error], exc.doc), 422)) from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8/16/32, or nested too deep
        raise _BadBodyError(_json({"detail": "There was an error parsing the body"}, 400)) from exc


def _search_page(prefect_ui_url: str) -> str:
    """The search page with its configuration (JSON, safe inside a script element)."""
    config = json.dumps({"prefect_ui_url": prefect_ui_url.rstrip("/")}).replace("</", "<\\/")
    return (
        (Path(__file__).with_name("static") / "search.html")
        .read_text()
        .replace("__CONFIG__", config)
    )


@dataclass(frozen=True)
class AppParts:
    """What an extension's routes may use: the settings, the process's Elasticsearch client,
    the index names, the repository and the request-body size guard."""

    settings: QuerySettings
    es: AsyncElasticsearch
    names: IndexNames
    repository: Repository
    body_within_limit: Callable[[Request], Awaitable[None]]


#: builds more routes from the app's parts (the composition root adds the saved searches of
#: alerts/routes.py this way, so this package never imports the packages built on it)
Extension = Callable[[AppParts], APIRouter]


def create_app(
    query: QuerySettings, es_settings: ElasticsearchSettings, extensions: Sequence[Extension] = ()
) -> FastAPI:
    """Build the API with one Elasticsearch client for the process's lifetime, plus the
    routers of `extensions`."""
    names = IndexNames(es_settings.index_prefix)
    es = make_es_client(es_settings)
    repo = Repository(
        es,
        names,
        query.max_result_window,
        query.page_boundaries,
        window_pages=query.relevance_window_pages,
        window_min_matches=query.relevance_window_min_matches,
        request_cache=query.request_cache,
        rank_ahead=query.relevance_rank_ahead,
        rank_ahead_pages=query.relevance_rank_ahead_pages,
        pages_ahead=query.pages_ahead,
    )
    default_limit = query.default_limit

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await repo.aclose()
        await es.close()
        flush_tracing()  # uvicorn ends the process with the SIGTERM it got, right after this

    app = FastAPI(title="Prefect artifact search", lifespan=lifespan, docs_url="/docs")
    install_auth(app, query)  # query/auth.py: 401 unless credentials, when configured
    app.add_middleware(RequestIdMiddleware)  # outside auth: a 401 has a request id too
    instrument_fastapi(app)  # tracing on: a server span per request (services/telemetry.py)
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
            except TranslationError as exc:
                response = _json({"detail": str(exc)}, 422)
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

    handlers = {
        "/api/artifacts/filter": endpoint("filter", read_artifacts),
        "/api/artifacts/count": endpoint("count", count_artifacts),
        "/api/artifacts/latest/filter": endpoint("latest_filter", read_latest),
        "/api/artifacts/latest/count": endpoint("latest_count", count_latest),
    }
    for route in PREFECT_ROUTES:  # documented by query/openapi.py, validated by the handler
        app.add_api_route(route.path, handlers[route.path], methods=["POST"], **route_docs(route))
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_document(generate_openapi(), default_limit)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override

    @app.get(READ_PATHS[0], **read_docs(Artifact, "No artifact has this id."))
    async def read_artifact(artifact_id: str) -> Response:
        try:
            parsed = uuid.UUID(artifact_id)
        except ValueError:
            # like Prefect, whose route only matches UUIDs: no route, plain 404
            return _json({"detail": "Not Found"}, 404)
        try:
            row = await repo.get_artifact(str(parsed))
        except BackendUnavailableError as exc:
            return _json({"detail": str(exc)}, 503)
        REQUESTS.labels("read", "200" if row else "404").inc()
        return _json(row) if row else _json({"detail": "Artifact not found."}, 404)

    @app.get(READ_PATHS[1], **read_docs(Artifact, "No artifact has this key."))
    async def read_latest_artifact(key: str) -> Response:
        try:
            row = await repo.latest_by_key(key)
        except BackendUnavailableError as exc:
            return _json({"detail": str(exc)}, 503)
        REQUESTS.labels("latest", "200" if row else "404").inc()
        return _json(row) if row else _json({"detail": "Artifact not found."}, 404)

    async def body_within_limit(request: Request) -> None:
        if len(await request.body()) > query.max_body_bytes:
            raise HTTPException(413, f"Request body exceeds {query.max_body_bytes} bytes.")

    @app.post(
        "/ext/v1/artifacts/search",
        response_model=SearchResponse,
        tags=["search"],
        summary="Search artifacts: full text, ranges, any order, cursors, facets",
        dependencies=[Depends(body_within_limit)],
        responses={
            410: {"description": "The cursor expired: start the search again."},
            422: {"description": "Invalid body, query, filter or cursor."},
            503: {"description": "Elasticsearch is unavailable."},
        },
    )
    async def search_extension(req: SearchRequest) -> Response:
        """Beyond Prefect's filters (docs/search.md). The answer is always a subset of what
        Prefect's endpoint answers for `prefect_filter` (or `prefect_latest_filter`)."""
        start = time.perf_counter()
        try:
            later: list[Callable[[], None]] = []
            with ES_LATENCY.labels("extension").time():
                result = await repo.extension_search(req, later.append)
            response = _json(result.model_dump())
            if later:  # the next cursor page's fetch starts once this answer is sent
                response.background = BackgroundTask(_start_all, later)
        except CursorExpiredError as exc:
            response = _json({"detail": str(exc)}, 410)
        except TranslationError as exc:
            response = _json({"detail": str(exc)}, 422)
        except BackendUnavailableError as exc:
            response = _json({"detail": str(exc)}, 503)
        LATENCY.labels("search").observe(time.perf_counter() - start)
        REQUESTS.labels("search", str(response.status_code)).inc()
        return response

    parts = AppParts(query, es, names, repo, body_within_limit)
    for extension in extensions:
        app.include_router(extension(parts))

    page = _search_page(query.prefect_ui_url)

    @app.get("/ext/v1/search", include_in_schema=False)
    async def search_page() -> Response:
        """The search page (docs/search.md, "The search page")."""
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/api/health")
    async def health() -> Response:
        return _json(True)

    @app.get("/api/ready")
    async def ready() -> Response:
        why = await repo.unready()
        if why is None:
            return _json({"status": "ready"})
        return _json({"status": "unavailable", "detail": why}, 503)

    # What Prefect's client asks besides the artifact routes. ``/admin/version``
    # names the Prefect release whose API is served (the client compares its
    # major version); ``/version`` is that release's REST API version. The
    # service has no CSRF protection (it only reads), and says so the way a
    # Prefect server with CSRF protection disabled does, so clients stop asking.
    @app.get("/api/admin/version")
    async def admin_version() -> Response:
        return _json(PREFECT_VERSION)

    @app.get("/api/version")
    async def api_version() -> Response:
        return _json(PREFECT_API_VERSION)

    @app.get("/api/csrf-token")
    async def csrf_token() -> Response:
        return _json({"detail": "CSRF protection is disabled."}, 422)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

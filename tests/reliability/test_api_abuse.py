"""API abuse: generated and hostile requests against the query API on a real index.

The app runs in-process (httpx's ASGI transport) over a small index loaded with the
indexer engine. Every request is timed; no answer may be a 5xx. Sizes: this file
tries ``RELIABILITY_CASES`` generated cases in all (default 1,000, split across
the generated tests; a full run uses 10,000).

* schemathesis over the service's OpenAPI document. The four POST routes take raw
  request bodies, so FastAPI publishes no request body for them: the document is
  completed with the JSON schemas of the pydantic request models before generation.
* hypothesis bodies built from those schemas (schemathesis' JSON-schema generator; the
  hypothesis-jsonschema release of today does not work with this hypothesis), sent valid
  (must be 200) and mutated at a known path (must be 422 naming that path in
  `exception_detail`).
* request-size limit, pathological `like_` patterns, literal handling of strings that
  look like Elasticsearch syntax, and limit/offset bounds.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from elasticsearch import AsyncElasticsearch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from artifact_search.api import create_api
from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import NONE, dataset_records
from indexer.local import LocalPipeline
from services.config import ElasticsearchSettings, QuerySettings
from services.contract import encode_event
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames
from services.prefect.requests import (
    ArtifactCollectionCountRequest,
    ArtifactCollectionReadRequest,
    ArtifactCountRequest,
    ArtifactReadRequest,
)
from tests.reliability.conftest import reliability_cases

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_BODY_BYTES = 200_000
LATENCY_BOUND_S = 5.0
"""Generous safety bound per request (not a benchmark)."""

ROUTES: dict[str, type[Any]] = {
    "/api/artifacts/filter": ArtifactReadRequest,
    "/api/artifacts/count": ArtifactCountRequest,
    "/api/artifacts/latest/filter": ArtifactCollectionReadRequest,
    "/api/artifacts/latest/count": ArtifactCollectionCountRequest,
}
TS = "2024-01-01T00:00:00Z"
LITERAL_KEYS = [
    "*",
    "*:*",
    "%",
    "_",
    "a%b",
    "a_b",
    "\\",
    "a\\%b",
    '{"match_all":{}}',
    '{"script":{"source":"1"}}',
    "_all",
    "?",
    "key OR *",
]
CANARY = "canary-0b1c2d3e-never-returned"


# ------------------------------------------------------------------------------------------
# an event loop in a thread: hypothesis tests are synchronous, the app and its ES client
# must live in one loop for the whole module
# ------------------------------------------------------------------------------------------
class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Tally:
    """What one test sent and got: feeds docs/reliability/RESULTS.md."""

    requests: int = 0
    server_errors: int = 0
    worst_s: float = 0.0
    worst_request: str = ""
    statuses: dict[int, int] = field(default_factory=dict)


TALLIES: dict[str, Tally] = {}


@dataclass
class Service:
    lt: LoopThread
    client: httpx.AsyncClient
    names: IndexNames
    literal_ids: dict[str, str]
    artifact_count: int

    def request(self, tally: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        resp = self.lt.run(self.client.request(method, url, **kwargs), timeout=60)
        elapsed = time.perf_counter() - started
        t = TALLIES.setdefault(tally, Tally())
        t.requests += 1
        t.statuses[resp.status_code] = t.statuses.get(resp.status_code, 0) + 1
        if resp.status_code >= 500:
            t.server_errors += 1
        if elapsed > t.worst_s:
            t.worst_s = elapsed
            t.worst_request = f"{method} {url} {str(kwargs)[:160]}"
        assert resp.status_code < 500, f"{resp.status_code} {resp.text[:500]} for {kwargs}"
        assert elapsed < LATENCY_BOUND_S, f"{elapsed:.2f}s for {method} {url}"
        assert CANARY not in resp.text
        return resp

    def post(self, tally: str, path: str, body: Any) -> httpx.Response:
        return self.request(tally, "POST", path, json=body)


async def _load(es: AsyncElasticsearch, names: IndexNames) -> tuple[dict[str, str], int]:
    await ensure_indices(es, names)
    dataset = generate_dataset(11, DatasetScale.tiny())
    records = list(dataset_records(dataset, 11, NONE))
    literal_ids: dict[str, str] = {}
    for key in LITERAL_KEYS:
        aid = str(uuid.uuid4())
        literal_ids[key] = aid
        data = {"id": aid, "created": TS, "updated": TS, "key": key, "type": "markdown"}
        records.append(("artifact", aid.encode(), encode_event("artifact", aid, "upsert", 1, data)))
    await LocalPipeline(es, names).load(records, batch=400)
    # a document in an index outside the service's aliases: must never be reachable
    await es.index(
        index=f"{names.prefix}canary",
        id=CANARY,
        document={"id": CANARY, "key": "*", "type": "markdown", "live": True},
        refresh=True,
    )
    await es.indices.refresh(index=",".join(names.all_aliases()))
    count = await es.count(index=names.artifacts, query={"term": {"live": True}})
    return literal_ids, int(count["count"])


@pytest.fixture(scope="module")
def service(elasticsearch_url: str) -> Iterator[Service]:
    lt = LoopThread()
    names = IndexNames(f"abuse-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url)
    try:
        literal_ids, count = lt.run(_load(es, names))
        app = create_api(
            QuerySettings(default_limit=DEFAULT_LIMIT, max_body_bytes=MAX_BODY_BYTES),
            ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix),
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")
        yield Service(lt, client, names, literal_ids, count)
        lt.run(client.aclose())
    finally:

        async def cleanup() -> None:
            await drop_indices(es, names)
            await es.options(ignore_status=404).indices.delete(index=f"{names.prefix}canary")
            await es.close()

        lt.run(cleanup())
        lt.close()
        _report()


def _report() -> None:
    summary = {
        name: {
            "requests": t.requests,
            "5xx": t.server_errors,
            "worst_s": round(t.worst_s, 3),
            "worst_request": t.worst_request,
            "statuses": dict(sorted(t.statuses.items())),
        }
        for name, t in TALLIES.items()
    }
    if path := os.environ.get("RELIABILITY_REPORT"):
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"api_abuse": summary}) + "\n")
    print(json.dumps(summary, indent=1))


# ------------------------------------------------------------------------------------------
# the request bodies, as the service's own OpenAPI document describes them (query/openapi.py)
# ------------------------------------------------------------------------------------------
def bodies_required(spec: dict[str, Any]) -> dict[str, Any]:
    """The document with the four POST bodies required (Prefect's are optional): generated
    cases then always carry one."""
    spec = copy.deepcopy(spec)
    for path in ROUTES:
        spec["paths"][path]["post"]["requestBody"]["required"] = True
    return spec


CASES = reliability_cases()
"""Generated cases of the whole file: 40% schemathesis, 20% valid bodies, 20% mutated
bodies (5% per route each), 20% raw bytes/JSON."""


def share(fraction: float) -> int:
    return max(1, round(CASES * fraction))


SETTINGS = settings(
    max_examples=share(0.4),
    deadline=None,
    database=None,
    derandomize=os.environ.get("RELIABILITY_SEED") is None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


def _to_httpx(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in kwargs.items() if k in ("headers", "params", "json", "cookies")}
    if "data" in kwargs:
        out["content"] = kwargs["data"]
    return out


# ------------------------------------------------------------------------------------------
# 1. schemathesis over the OpenAPI document
# ------------------------------------------------------------------------------------------
def test_the_openapi_document_has_the_post_bodies_with_the_services_limit(
    service: Service,
) -> None:
    spec = service.request("openapi", "GET", "/openapi.json").json()
    for path, model in ROUTES.items():
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert ref["schema"]["$ref"] == f"#/components/schemas/{model.__name__}"
        limit = spec["components"]["schemas"][model.__name__]["properties"].get("limit")
        if limit is not None:  # the list routes: the service's configured bound, not 200
            assert (limit["minimum"], limit["maximum"]) == (0, DEFAULT_LIMIT)


def test_schemathesis_cases_never_get_a_server_error(service: Service) -> None:
    spec = service.request("openapi", "GET", "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    strategies = []
    for result in schema.get_all_operations():
        op = result.ok()
        strategies.append(op.as_strategy(generation_mode=GenerationMode.POSITIVE))
        if op.method.upper() == "POST":
            strategies.append(op.as_strategy(generation_mode=GenerationMode.NEGATIVE))

    @SETTINGS
    @given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url="http://svc")
        resp = service.request("schemathesis", kwargs["method"], kwargs["url"], **_to_httpx(kwargs))
        if resp.status_code == 422 and case.method.upper() == "POST":
            body = resp.json()
            if case.path.startswith("/api/"):  # Prefect's shapes
                assert "exception_detail" in body or isinstance(body.get("detail"), str), body
            else:  # the extension: FastAPI's error list, or a sentence (docs/search.md)
                detail = body.get("detail")
                assert isinstance(detail, str) or all("loc" in e for e in detail), body

    run()


# ------------------------------------------------------------------------------------------
# 2. hypothesis bodies: valid ones are answered, mutated ones get a precise 422
# ------------------------------------------------------------------------------------------
_BODY_SCHEMA: list[Any] = []


def _valid_bodies(model: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies valid for `model` (and the service's limit bound), never absent."""
    if not _BODY_SCHEMA:
        app = create_api(QuerySettings(default_limit=DEFAULT_LIMIT), ElasticsearchSettings())
        _BODY_SCHEMA.append(schemathesis.openapi.from_dict(bodies_required(app.openapi())))
    path = next(p for p, m in ROUTES.items() if m is model)
    op = _BODY_SCHEMA[0][path]["POST"]
    return op.as_strategy(generation_mode=GenerationMode.POSITIVE).map(lambda case: case.body)


BOGUS = {"__bogus__": 1}


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every path to a member of a JSON object (objects only: list items are leaves)."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))


def _set(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@st.composite
def mutated(draw: Any, model: type[Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A valid body with one defect at a known path; returns the body and that path.

    Either a member (at any depth) is replaced by an object no field accepts, or an unknown
    key is added inside a filter object (unknown *top-level* keys are ignored, as Prefect
    does, so they are not defects).
    """
    body = draw(_valid_bodies(model))
    members = [p for p in _paths(body) if p[0] in model.model_fields]
    containers = [p for p in members if isinstance(_get(body, p), dict)]
    if members and draw(st.booleans()):
        path = draw(st.sampled_from(members))
        return _set(body, path, BOGUS), path
    if containers:
        path = draw(st.sampled_from(containers))
        return _set(body, (*path, "__bogus__"), 1), (*path, "__bogus__")
    filters = [f for f in model.model_fields if f not in ("offset", "limit", "sort")]
    name = draw(st.sampled_from(filters))
    return _set(body, (name,), BOGUS), (name,)


def _get(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for key in path:
        node = node[key]
    return node


@pytest.mark.parametrize("path", list(ROUTES))
def test_valid_generated_bodies_are_answered(service: Service, path: str) -> None:
    model = ROUTES[path]

    @settings(SETTINGS, max_examples=share(0.05))
    @given(body=_valid_bodies(model))
    def run(body: dict[str, Any]) -> None:
        resp = service.post("valid_bodies", path, body)
        assert resp.status_code == 200, f"{resp.status_code} {resp.text[:400]} for {body}"
        got = resp.json()
        if path.endswith("count"):
            assert isinstance(got, int) and 0 <= got <= service.artifact_count
        else:
            assert isinstance(got, list) and len(got) <= body.get("limit", DEFAULT_LIMIT)

    run()


@pytest.mark.parametrize("path", list(ROUTES))
def test_mutated_bodies_get_422_naming_the_field(service: Service, path: str) -> None:
    model = ROUTES[path]

    @settings(SETTINGS, max_examples=share(0.05))
    @given(case=mutated(model))
    def run(case: tuple[dict[str, Any], tuple[str, ...]]) -> None:
        body, bad = case
        resp = service.post("mutated_bodies", path, body)
        assert resp.status_code == 422, f"{resp.status_code} for {body}"
        detail = resp.json()["exception_detail"]
        locs = [tuple(err["loc"]) for err in detail]
        want = ("body", *bad)
        assert any(loc[: len(want)] == want for loc in locs), f"{want} not in {locs}"
        for err in detail:
            assert err["msg"] and err["type"]

    run()


def test_arbitrary_bytes_and_json_never_get_a_server_error(service: Service) -> None:
    paths = st.sampled_from(list(ROUTES))
    raw = st.one_of(
        st.binary(max_size=2000),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
            max_leaves=20,
        ).map(lambda v: json.dumps(v, allow_nan=True).encode()),
        st.sampled_from(
            [
                b"[" * 100_000,
                b'{"limit": 1e999}',
                b'{"limit": NaN}',
                b'{"offset": 100000000000000000000000000000000}',
                b"\xef\xbb\xbf{}",
                "{}".encode("utf-16"),
                b'{"artifacts": {"key": {"any_": ["\\ud800"]}}}',
            ]
        ),
    )
    content_types = st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded", None]
    )

    @settings(SETTINGS, max_examples=share(0.2))
    @given(path=paths, content=raw, content_type=content_types)
    def run(path: str, content: bytes, content_type: str | None) -> None:
        headers = {"content-type": content_type} if content_type else {}
        resp = service.request("raw_bodies", "POST", path, content=content, headers=headers)
        if resp.status_code == 422:
            body = resp.json()
            assert "exception_detail" in body or isinstance(body.get("detail"), str)

    run()


# ------------------------------------------------------------------------------------------
# 3. request size, pathological patterns, literals, paging bounds
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", list(ROUTES))
def test_request_size_limit(service: Service, path: str) -> None:
    over = b'{"limit": 1}' + b" " * (MAX_BODY_BYTES - 11)
    resp = service.request(
        "size_limit", "POST", path, content=over, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413
    assert str(MAX_BODY_BYTES) in resp.json()["detail"]
    at = b'{"limit": 1}' + b" " * (MAX_BODY_BYTES - 12)
    resp = service.request(
        "size_limit", "POST", path, content=at, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200


LIKE_FIELDS = [
    ("artifacts", "key"),
    ("flow_runs", "name"),
    ("task_runs", "name"),
    ("flows", "name"),
    ("deployments", "name"),
]
PATHOLOGICAL = {
    "long_literal_100k": "a" * 100_000,
    "all_percent_20k": "%" * 20_000,
    "all_underscore_20k": "_" * 20_000,
    "percent_underscore_mix": "%_" * 10_000,
    "leading_wildcards": "%a" * 5_000 + "%",
    "alternating_star": "*?" * 5_000,
    "backslashes_10k": "\\" * 10_240,
    "backslash_escapes": "\\%\\_" * 2_500,
    "regex_like": "(a|b)*" * 2_000 + "[^x]{1000}",
    "unicode_wide": "\U0010ffff" * 10_000,
}


@pytest.mark.parametrize("pattern_name", list(PATHOLOGICAL))
def test_pathological_like_patterns_are_bounded(service: Service, pattern_name: str) -> None:
    pattern = PATHOLOGICAL[pattern_name]
    for path in ROUTES:
        for filter_name, field_name in LIKE_FIELDS:
            if filter_name == "artifacts" and "latest" in path:
                body: dict[str, Any] = {"artifacts": {"key": {"like_": pattern}}}
            else:
                body = {filter_name: {field_name: {"like_": pattern}}}
            resp = service.post("pathological_like", path, body)
            assert resp.status_code in (200, 422), resp.text[:300]
    # the same pattern through the flow-or-deployment-name filter
    body = {"flows": {"flow_or_deployment_name": {"like_": pattern}}}
    resp = service.post("pathological_like", "/api/artifacts/count", body)
    assert resp.status_code in (200, 422), resp.text[:300]


@pytest.mark.parametrize("key", LITERAL_KEYS)
def test_strings_that_look_like_query_syntax_are_literals(service: Service, key: str) -> None:
    want = service.literal_ids[key]
    for path in ("/api/artifacts/filter", "/api/artifacts/latest/filter"):
        rows = service.post("literals", path, {"artifacts": {"key": {"any_": [key]}}}).json()
        assert [r["key"] for r in rows] == [key]
        if "latest" in path:
            assert rows[0]["latest_id"] == want
        else:
            assert rows[0]["id"] == want
    # `like_` is a contains-match on the literal text (its `%`/`_` are wildcards and `\` the
    # escape, as in Prefect's ILIKE; nothing else is syntax): every hit contains the text
    rows = service.post(
        "literals", "/api/artifacts/filter", {"artifacts": {"key": {"like_": key}}}
    ).json()
    if not set(key) & {"%", "_", "\\"}:  # PostgreSQL's LIKE metacharacters and escape
        assert all(key.lower() in (r["key"] or "").lower() for r in rows), rows
        assert want in {r["id"] for r in rows}
    from urllib.parse import quote

    resp = service.request("literals", "GET", f"/api/artifacts/{quote(key, safe='')}/latest")
    # Prefect answers this route with the key's collection row (its id is the collection's)
    assert resp.status_code == 200 and resp.json()["key"] == key


def test_star_any_matches_only_the_literal_star(service: Service) -> None:
    rows = service.post(
        "literals", "/api/artifacts/filter", {"artifacts": {"key": {"any_": ["*"]}}}
    )
    assert [r["id"] for r in rows.json()] == [service.literal_ids["*"]]
    assert (
        service.post(
            "literals", "/api/artifacts/count", {"flows": {"name": {"any_": ["*"]}}}
        ).json()
        == 0
    )
    # ids are UUIDs: "*" is rejected, never expanded
    resp = service.post("literals", "/api/artifacts/filter", {"artifacts": {"id": {"any_": ["*"]}}})
    assert resp.status_code == 422
    assert resp.json()["exception_detail"][0]["loc"][:4] == ["body", "artifacts", "id", "any_"]
    for path in (
        "/api/artifacts/*",
        "/api/artifacts/_all",
        f"/api/artifacts/{service.names.prefix}canary",
    ):
        assert service.request("literals", "GET", path).status_code == 404
    # index names as keys are just keys
    for key in (service.names.artifacts, f"{service.names.prefix}canary", "_all", "*"):
        body = {"artifacts": {"key": {"any_": [key]}}}
        got = service.post("literals", "/api/artifacts/count", body).json()
        assert got == (1 if key in service.literal_ids else 0)


def test_sort_and_operator_accept_only_their_enums(service: Service) -> None:
    for sort in ("_script", "key", "KEY_ASC; DROP", '{"_script":{}}', "CREATED_DESC,ID_ASC"):
        resp = service.post("literals", "/api/artifacts/filter", {"sort": sort})
        assert resp.status_code == 422
        assert resp.json()["exception_detail"][0]["loc"] == ["body", "sort"]
    resp = service.post("literals", "/api/artifacts/count", {"artifacts": {"operator": "script"}})
    assert resp.status_code == 422
    assert resp.json()["exception_detail"][0]["loc"] == ["body", "artifacts", "operator"]


@pytest.mark.parametrize(
    ("offset", "want_status"),
    [
        (0, 200),
        (10_000, 200),
        (10**12, 200),
        (2**63 - 1, 200),
        (2**63, 200),
        (10**30, 200),
        (-1, 422),
        (-(10**12), 422),
    ],
)
def test_offset_bounds(service: Service, offset: int, want_status: int) -> None:
    for path in ("/api/artifacts/filter", "/api/artifacts/latest/filter"):
        resp = service.post("paging", path, {"offset": offset, "limit": 5})
        assert resp.status_code == want_status, resp.text[:300]
        if want_status == 200 and offset >= service.artifact_count:
            assert resp.json() == []
        if want_status == 422:
            assert resp.json()["exception_detail"][0]["loc"] == ["body", "offset"]


@pytest.mark.parametrize("limit", [-1, DEFAULT_LIMIT + 1, 10**12, 2**64, -(2**70)])
def test_limit_bounds(service: Service, limit: int) -> None:
    for path in ("/api/artifacts/filter", "/api/artifacts/latest/filter"):
        resp = service.post("paging", path, {"limit": limit})
        assert resp.status_code == 422
        assert "limit" in resp.json()["detail"]


def test_limit_of_wrong_type_names_the_field(service: Service) -> None:
    for limit in ("ten", 1.5, [1], {"a": 1}):
        resp = service.post("paging", "/api/artifacts/filter", {"limit": limit})
        assert resp.status_code == 422
        assert ["body", "limit"] in [e["loc"][:2] for e in resp.json()["exception_detail"]]

"""Elasticsearch trouble is a 503 with a JSON ``detail`` on every endpoint, never a 500.

Three kinds of trouble: nothing listens on the configured port, the node answers
but the index does not exist, and Elasticsearch refuses a query it cannot build
(a ``like_`` automaton too large), which is the caller's doing and answers 422.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from elasticsearch import AsyncElasticsearch

from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import COLLECTIONS_MAPPING, IndexNames

CLOSED = "http://127.0.0.1:1"
ARTIFACT_ID = "0f9e5d1c-7a0b-4c2d-8e3f-1a2b3c4d5e6f"

POSTS = (
    ("/api/artifacts/filter", {"limit": 5}),
    ("/api/artifacts/filter", {"offset": 25_000, "limit": 5}),  # search_after + PIT path
    ("/api/artifacts/count", {}),
    ("/api/artifacts/latest/filter", {"sort": "KEY_ASC"}),
    ("/api/artifacts/latest/count", {"artifacts": {"key": {"like_": "x"}}}),
)
GETS = (f"/api/artifacts/{ARTIFACT_ID}", "/api/artifacts/some-key/latest", "/api/ready")


def _client(es_settings: ElasticsearchSettings) -> httpx.AsyncClient:
    app = create_app(QuerySettings(max_result_window=1_000), es_settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


async def _all_unavailable(client: httpx.AsyncClient) -> list[str]:
    problems = []
    responses = [(path, await client.post(path, json=body)) for path, body in POSTS]
    responses += [(path, await client.get(path)) for path in GETS]
    for path, resp in responses:
        body = resp.json()
        if resp.status_code != 503:
            problems.append(f"{path}: {resp.status_code} {resp.text[:200]}")
        elif not isinstance(body, dict) or not isinstance(body.get("detail"), str):
            problems.append(f"{path}: no detail in {resp.text[:200]}")
        elif "Elasticsearch" not in body["detail"]:
            problems.append(f"{path}: unclear detail {body['detail']!r}")
    return problems


async def test_closed_port_is_503_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTICSEARCH_URL", CLOSED)
    async with _client(ElasticsearchSettings()) as client:
        assert await _all_unavailable(client) == []
        # what does not need Elasticsearch still answers
        assert (await client.get("/api/health")).json() is True
        assert (await client.get("/api/admin/version")).json() == "3.9.1"
        # validation happens before the search: still Prefect's 422
        resp = await client.post("/api/artifacts/filter", json={"sort": "BAD"})
        assert resp.status_code == 422
        assert (await client.post("/api/artifacts/filter", json={"limit": 0})).json() == []


async def test_missing_index_is_503_everywhere(elasticsearch_url: str) -> None:
    prefix = f"absent-{uuid.uuid4().hex[:8]}-"
    async with _client(ElasticsearchSettings(url=elasticsearch_url, index_prefix=prefix)) as c:
        assert await _all_unavailable(c) == []


@pytest.fixture
async def empty_index(elasticsearch_url: str) -> AsyncIterator[ElasticsearchSettings]:
    names = IndexNames(f"cplx-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url)
    await ensure_indices(es, names)
    try:
        yield ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix)
    finally:
        await drop_indices(es, names)
        await es.close()


@pytest.mark.parametrize(
    "like",
    ["a" * 5_000, "_" * 1_000, "a_" * 500, "%_" * 1_000, "x" * 40_000],
    ids=["5000-chars", "1000-underscores", "a_-x500", "%_-x1000", "40000-chars"],
)
async def test_too_complex_like_is_422(empty_index: ElasticsearchSettings, like: str) -> None:
    async with _client(empty_index) as client:
        for path in ("/api/artifacts/filter", "/api/artifacts/latest/count"):
            resp = await client.post(path, json={"flow_runs": {"name": {"like_": like}}})
            assert resp.status_code == 422, resp.text[:300]
            detail = resp.json()["detail"]
            assert "too complex" in detail and "like_" in detail


@pytest.mark.parametrize("like", ["%" * 1_000, "a" * 300, "_" * 200, "%".join("ab" * 50)])
async def test_long_but_simple_like_is_answered(
    empty_index: ElasticsearchSettings, like: str
) -> None:
    async with _client(empty_index) as client:
        resp = await client.post(
            "/api/artifacts/count", json={"artifacts": {"key": {"like_": like}}}
        )
        assert resp.status_code == 200, resp.text[:300]


async def test_odd_bodies_never_500(empty_index: ElasticsearchSettings) -> None:
    """Bodies that make Prefect itself fail (NaN, integers beyond 64 bits) get an answer."""
    cases = [
        (b'{"limit": NaN}', 422),
        (b'{"offset": Infinity}', 422),
        (b'{"limit": "x", "junk": 123456789012345678901234567890}', 422),
        (b'{"offset": 123456789012345678901234567890}', 200),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'"\\ud800"', 422),
        (b'{"limit": "x", "sort": "\\udfff"}', 422),
    ]
    async with _client(empty_index) as client:
        for content, status in cases:
            resp = await client.post(
                "/api/artifacts/filter",
                content=content,
                headers={"content-type": "application/json"},
            )
            assert resp.status_code == status, (content[:40], resp.text[:200])
            resp.json()  # always valid JSON


async def test_indices_an_older_schema_made_are_not_ready(elasticsearch_url: str) -> None:
    """An index made before `key_tri` existed would answer key `like_` filters wrongly, not
    slowly: readiness says so (and names `replay`) until it is rebuilt."""
    names = IndexNames(f"old-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url)
    await ensure_indices(es, names)
    settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix)
    try:
        async with _client(settings) as client:
            assert (await client.get("/api/ready")).json() == {"status": "ready"}
            # what an older release made: the same mapping without the schema's `_meta`
            old = f"{names.prefix}collections-v3"
            mapping = {k: v for k, v in COLLECTIONS_MAPPING.items() if k != "_meta"}
            await es.indices.create(index=old, mappings=mapping)
            current = names.concrete(names.collections)
            await es.indices.update_aliases(
                actions=[
                    {"remove": {"index": current, "alias": names.collections}},
                    {"add": {"index": old, "alias": names.collections}},
                ]
            )
            resp = await client.get("/api/ready")
            assert resp.status_code == 503
            detail = resp.json()["detail"]
            assert old in detail and "replay" in detail and current not in detail
    finally:
        await drop_indices(es, names)
        await es.close()

"""First pages in relevance order on a real Elasticsearch: a top-k by score, put in order.

The service asks a relevance-ordered first page as Elasticsearch's k best by score (which
skips documents that cannot make the page) and orders those hits by score then id; when
hits of one score straddle the page's end it searches again in the full order
(query/extension.py `top_scored_body`). These tests index artifacts whose scores tie in
groups (the same text) and others whose scores all differ, and check every page size,
with and without facets, and a cursor walk after such a first page, against the order
docs/search.md states: score descending, then id descending. The scores come from
Elasticsearch (a plain search of the same words); the order is computed here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from elasticsearch import AsyncElasticsearch

from indexer.local import LocalPipeline
from query.app import create_app
from query.repository import TOP_SCORED_PAGES
from services.config import ElasticsearchSettings, QuerySettings
from services.contract import encode_event
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames

PATH = "/ext/v1/artifacts/search"
TS = "2024-01-01T00:00:00Z"


def _texts() -> list[str]:
    out = ["zebra " * n + "filler " * (12 - n) for n in range(1, 9)]  # scores all differ
    out += ["zebra in the same words"] * 7  # one tie group
    out += ["zebra zebra and other same words"] * 5  # another
    out += ["nothing to see here"] * 3  # no match
    return out


TEXTS = _texts()
IDS = [str(uuid.uuid4()) for _ in TEXTS]


@dataclass
class Stack:
    es: AsyncElasticsearch
    names: IndexNames
    client: httpx.AsyncClient


@pytest.fixture
async def stack(elasticsearch_url: str) -> AsyncIterator[Stack]:
    names = IndexNames(f"rel-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url, request_timeout=60)
    await ensure_indices(es, names)
    records = []
    for i, (artifact_id, text) in enumerate(zip(IDS, TEXTS, strict=True)):
        body = {
            "id": artifact_id,
            "key": f"k-{i % 4}",
            "type": "markdown" if i % 2 else "table-like",
            "data": text,
            "created": TS,
            "updated": TS,
        }
        event = encode_event("artifact", artifact_id, "upsert", 1, body)
        records.append(("artifact", artifact_id.encode(), event))
    await LocalPipeline(es, names).load(records, batch=50)
    await es.indices.refresh(index=",".join(names.all_aliases()))
    app = create_app(
        QuerySettings(), ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix)
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc", timeout=60
    )
    try:
        yield Stack(es, names, client)
    finally:
        await client.aclose()
        await drop_indices(es, names)
        await es.close()


async def expected_order(stack: Stack, words: str) -> list[tuple[float, str]]:
    """Every match's (score, id) from Elasticsearch, in the documented order."""
    resp = await stack.es.search(
        index=stack.names.artifacts,
        # the fields a word without a prefix is searched in, and their weights
        query={
            "query_string": {
                "query": words,
                "fields": ["x.key^3", "x.description^2", "x.data", "x.metadata"],
            }
        },
        size=100,
        source=["id"],
    )
    pairs = [(float(h["_score"]), h["_source"]["id"]) for h in resp["hits"]["hits"]]
    return sorted(pairs, reverse=True)


def _outcome(name: str) -> float:
    return float(TOP_SCORED_PAGES.labels(name)._value.get())


async def test_every_first_page_size_is_in_score_then_id_order(stack: Stack) -> None:
    want = await expected_order(stack, "zebra")
    assert len(want) == 20  # the three texts without the word do not match
    scores = [s for s, _ in want]
    assert len(set(scores)) < len(scores)  # the data has ties to straddle
    before = {o: _outcome(o) for o in ("ordered", "tied")}
    for limit in range(1, 23):
        for facets in ([], ["type"]):
            body = {"q": "zebra", "limit": limit, "facets": facets, "highlight": limit % 2 == 0}
            resp = await stack.client.post(PATH, json=body)
            assert resp.status_code == 200, resp.text[:300]
            hits = resp.json()["hits"]
            got = [(h["score"], h["artifact"]["id"]) for h in hits]
            assert [i for _, i in got] == [i for _, i in want[:limit]], (limit, facets)
            assert [s for s, _ in got] == pytest.approx(scores[:limit])
            if facets:
                counts = {b["value"]: b["count"] for b in resp.json()["facets"]["type"]}
                assert sum(counts.values()) == 20
    # both ways were taken: hits put in order, and pages whose end splits a tie group
    assert _outcome("ordered") > before["ordered"]
    assert _outcome("tied") > before["tied"]


async def test_a_cursor_walk_after_a_top_scored_first_page(stack: Stack) -> None:
    want = [i for _, i in await expected_order(stack, "zebra")]
    for limit in (3, 4, 7):
        seen: list[str] = []
        body: dict[str, Any] = {"q": "zebra", "limit": limit}
        page = (await stack.client.post(PATH, json=body)).json()
        seen += [h["artifact"]["id"] for h in page["hits"]]
        while page["next_cursor"]:
            resp = await stack.client.post(PATH, json={**body, "cursor": page["next_cursor"]})
            assert resp.status_code == 200, resp.text[:300]
            page = resp.json()
            seen += [h["artifact"]["id"] for h in page["hits"]]
        assert seen == want, limit


async def test_other_orders_and_totals_are_not_asked_by_score_alone(stack: Stack) -> None:
    before = {o: _outcome(o) for o in ("ordered", "tied")}
    want = [i for _, i in await expected_order(stack, "zebra")]
    total = (await stack.client.post(PATH, json={"q": "zebra", "track_total": True})).json()
    assert total["total"] == 20 and [h["artifact"]["id"] for h in total["hits"]] == want
    newest = {"q": "zebra", "sort": [{"field": "created", "order": "desc"}], "limit": 5}
    assert (await stack.client.post(PATH, json=newest)).status_code == 200
    assert {o: _outcome(o) for o in ("ordered", "tied")} == before

"""The query service's two-search answers over a fake Elasticsearch client.

A continued page (query/repository.py `_continue`) is one point in time and one
`_msearch` of the page after a remembered boundary and the count at or before it; a
search extension's first page with facets (`_hits_and_facets`) is one point in time and
one `_msearch` of the hits and the facet counts. These tests pin what the real-server
tests cannot provoke: a failed `_msearch` falls back to the single search, and every
point in time opened is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from query.extension import SearchRequest
from query.repository import PAGE_BOUNDS, PAGE_CONTINUATIONS, Repository
from query.resume import at_or_before
from services.es.indices import IndexNames

SORT = [{"key": {"order": "asc", "missing": "_last"}}]
QUERY: dict[str, Any] = {"bool": {"filter": [{"term": {"live": True}}]}}
KEYS = ["a", "b", "c", "d", "e", "f"]


def _hit(key: str) -> dict[str, Any]:
    return {"_source": {"key": key}, "sort": [key]}


class FakeEs:
    """Answers from-start searches over `KEYS`; the `_msearch` answer is set per test."""

    def __init__(self, msearch_answer: dict[str, Any]) -> None:
        self.msearch_answer = msearch_answer
        self.searches: list[dict[str, Any]] = []
        self.msearches: list[list[dict[str, Any]]] = []
        self.opened: list[str] = []
        self.closed: list[str] = []

    async def search(self, *, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.searches.append(body)
        start = body.get("from", 0)
        return {"hits": {"hits": [_hit(k) for k in KEYS[start : start + body["size"]]]}}

    async def open_point_in_time(self, *, index: str, keep_alive: str) -> dict[str, Any]:
        pit = f"pit-{len(self.opened)}"
        self.opened.append(pit)
        return {"id": pit}

    async def close_point_in_time(self, *, id: str) -> dict[str, Any]:
        self.closed.append(id)
        return {"succeeded": True}

    async def msearch(self, *, searches: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        self.msearches.append(searches)
        return self.msearch_answer


def _count(outcome: str) -> float:
    return float(PAGE_CONTINUATIONS.labels(outcome)._value.get())


async def _pages(es: FakeEs) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    repo = Repository(es, IndexNames("t-"), max_result_window=100, page_boundaries=8)  # type: ignore[arg-type]
    first = await repo.search(QUERY, SORT, offset=0, limit=2, collection=False)
    second = await repo.search(QUERY, SORT, offset=2, limit=2, collection=False)
    await asyncio.sleep(0)  # the point in time is closed by a task of its own
    await asyncio.sleep(0)
    return first, second


async def test_a_continued_page_is_one_msearch_of_one_point_in_time() -> None:
    es = FakeEs(
        {
            "responses": [
                {"status": 200, "hits": {"hits": [_hit("c"), _hit("d")]}},
                {"status": 200, "hits": {"total": {"value": 2}}},
            ]
        }
    )
    before = _count("continued")
    first, second = await _pages(es)
    assert [d["key"] for d in first + second] == ["a", "b", "c", "d"]
    assert _count("continued") == before + 1
    assert len(es.searches) == 1  # only the first page searched from the start
    (searches,) = es.msearches
    page, count = searches[1], searches[3]
    assert page["search_after"] == ["b"] and page["pit"] == {"id": "pit-0"}
    assert count["pit"] == {"id": "pit-0"} and count["track_total_hits"] is True
    assert "aggs" not in page  # an aggregation would collect every match
    assert searches[0]["allow_partial_search_results"] is False
    assert es.closed == es.opened == ["pit-0"]


async def test_a_failed_continuation_falls_back_to_the_search_from_the_start() -> None:
    es = FakeEs(
        {
            "responses": [
                {"status": 500, "error": {"type": "search_phase_execution_exception"}},
                {"status": 200, "hits": {"total": {"value": 2}}},
            ]
        }
    )
    before = _count("failed")
    first, second = await _pages(es)
    assert [d["key"] for d in first + second] == ["a", "b", "c", "d"]
    assert _count("failed") == before + 1
    assert len(es.searches) == 2 and es.searches[1]["from"] == 1  # one hit in front
    assert es.closed == es.opened == ["pit-0"]


async def test_a_moved_boundary_is_searched_from_the_start() -> None:
    es = FakeEs(
        {
            "responses": [
                {"status": 200, "hits": {"hits": [_hit("c"), _hit("d")]}},
                {"status": 200, "hits": {"total": {"value": 3}}},  # one more before it
            ]
        }
    )
    before = _count("moved")
    _, second = await _pages(es)
    assert [d["key"] for d in second] == ["c", "d"]  # the fake's ranking from the start
    assert _count("moved") == before + 1
    assert len(es.searches) == 2
    assert es.closed == es.opened


async def test_hits_and_facets_are_two_searches_of_one_point_in_time() -> None:
    facets = {"type": {"buckets": [{"key": "markdown", "doc_count": 2}]}}
    es = FakeEs(
        {
            "responses": [
                {"status": 200, "hits": {"hits": [_hit("a")]}},
                {"status": 200, "aggregations": facets},
            ]
        }
    )
    repo = Repository(es, IndexNames("t-"), max_result_window=100)  # type: ignore[arg-type]
    req = SearchRequest(q="revenue", limit=1, facets=["type"], selected={"type": ["markdown"]})
    answer = await repo.extension_search(req)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert [h.artifact["key"] for h in answer.hits] == ["a"]
    assert answer.facets is not None
    assert [(b.value, b.count) for b in answer.facets["type"]] == [("markdown", 2)]
    (searches,) = es.msearches
    hits, counts = searches[1], searches[3]
    assert hits["pit"] == counts["pit"] == {"id": "pit-0"}
    assert "aggs" not in hits and hits["post_filter"]  # the selection narrows the hits only
    assert counts["size"] == 0 and "post_filter" not in counts and counts["aggs"]
    assert counts["query"] == hits["query"]
    assert es.searches == [] and es.closed == es.opened == ["pit-0"]


async def test_a_failed_search_of_hits_and_facets_is_run_as_one_search() -> None:
    es = FakeEs({"responses": [{"status": 400, "error": {"type": "x"}}, {"status": 200}]})
    repo = Repository(es, IndexNames("t-"), max_result_window=100)  # type: ignore[arg-type]
    answer = await repo.extension_search(SearchRequest(q="x", limit=1, facets=["type"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    (single,) = es.searches  # the one search, aggregations included, whose error counts
    assert single["aggs"] and single["size"] == 1
    assert [h.artifact["key"] for h in answer.hits] == ["a"]
    assert es.closed == es.opened == ["pit-0"]


class ShortWhenBounded(FakeEs):
    """A bounded search finds one hit fewer than asked: a document inside the page was
    deleted since its end was remembered."""

    async def search(self, *, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        answer = await super().search(body=body, **kwargs)
        if body["query"] != QUERY:
            answer["hits"]["hits"] = answer["hits"]["hits"][:-1]
        return answer


def _bounds(outcome: str) -> float:
    return float(PAGE_BOUNDS.labels(outcome)._value.get())


async def test_a_page_asked_again_is_searched_up_to_its_end() -> None:
    es = FakeEs({})
    repo = Repository(es, IndexNames("t-"), max_result_window=100, page_boundaries=8)  # type: ignore[arg-type]
    before = _bounds("bounded")
    first = await repo.search(QUERY, SORT, offset=0, limit=2, collection=False)
    again = await repo.search(QUERY, SORT, offset=0, limit=2, collection=False)
    assert first == again == [{"key": "a"}, {"key": "b"}]
    assert es.searches[0]["query"] == QUERY
    assert es.searches[1]["query"] == {"bool": {"filter": [QUERY, at_or_before(SORT, ["b"])]}}
    assert _bounds("bounded") == before + 1


async def test_a_bound_short_of_the_page_is_searched_again_without_it() -> None:
    es = ShortWhenBounded({})
    repo = Repository(es, IndexNames("t-"), max_result_window=100, page_boundaries=8)  # type: ignore[arg-type]
    before = _bounds("short"), _bounds("bounded")
    await repo.search(QUERY, SORT, offset=0, limit=2, collection=False)
    again = await repo.search(QUERY, SORT, offset=0, limit=2, collection=False)
    assert again == [{"key": "a"}, {"key": "b"}]
    assert [s["query"] == QUERY for s in es.searches] == [True, False, True]
    assert (_bounds("short"), _bounds("bounded")) == (before[0] + 1, before[1])


async def test_orders_elasticsearch_skips_on_are_not_bounded() -> None:
    es = FakeEs({})
    repo = Repository(es, IndexNames("t-"), max_result_window=100, page_boundaries=8)  # type: ignore[arg-type]
    by_id = [{"id_hi": {"order": "desc"}}, {"id_lo": {"order": "desc"}}]
    for _ in range(2):
        await repo.search(QUERY, by_id, offset=0, limit=2, collection=False)
    assert [s["query"] for s in es.searches] == [QUERY, QUERY]

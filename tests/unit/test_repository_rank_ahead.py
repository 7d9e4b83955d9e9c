"""Relevance windows ranked ahead (query/repository.py `_rank_ahead`), over a fake client.

When a full page uses up its window, the next window is ranked in the background; the
page asked next takes it (fetched by id, no ranking in its own request), or waits for
a ranking still running. The fake answers from one fixed ranking, as a point in time
would; what is checked is that every walk is exactly that ranking, and which requests
made it. Below: the next page fetched in the background once a cursor page is answered.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from elasticsearch import ConnectionError as EsConnectionError

from query.extension import SearchRequest
from query.repository import PAGES_AHEAD, RANKED_AHEAD, WINDOWED_PAGES, Repository
from services.es.indices import IndexNames

# 23 matches, scores tied in threes: the order is (score desc, then position)
RANKING = [
    {"_id": f"d{i:02d}", "_score": 100 - i // 3, "sort": [100 - i // 3, i], "_source": {"n": i}}
    for i in range(23)
]
LIMIT = 2
PAGES = 3  # windows of 6 hits


def _after(search_after: list[Any] | None) -> int:
    if search_after is None:
        return 0
    return next(i for i, h in enumerate(RANKING) if h["sort"] == list(search_after)) + 1


def _fetched(body: dict[str, Any]) -> set[str]:
    """The ids a fetch by id asked for (empty for any other search)."""
    query = body["query"]
    if not (isinstance(query, dict) and "bool" in query):
        return set()
    return {i for c in query["bool"].get("filter", []) if "ids" in c for i in c["ids"]["values"]}


class FakeEs:
    """Answers every search from `RANKING`; background rankings wait for `gate`."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.searches: list[dict[str, Any]] = []
        self.msearches = 0
        self.closed: list[str] = []

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = _fetched(body)
        if ids:
            hits = [h for h in RANKING if h["_id"] in ids]
        else:
            start = _after(body.get("search_after"))
            hits = RANKING[start : start + body["size"]]
        out: dict[str, Any] = {"hits": {"hits": hits, "total": {"value": len(RANKING)}}}
        if "pit" in body:
            out["pit_id"] = body["pit"]["id"]
        return out

    async def search(self, *, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.searches.append(body)
        if body.get("_source") is False:  # a ranking outside `_msearch`: ranked ahead
            await self.gate.wait()
        return self._answer(body)

    async def msearch(self, *, searches: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        self.msearches += 1
        return {"responses": [self._answer(body) for body in searches[1::2]]}

    async def open_point_in_time(self, *, index: str, keep_alive: str) -> dict[str, Any]:
        return {"id": "pit-1"}

    async def close_point_in_time(self, *, id: str) -> dict[str, Any]:
        self.closed.append(id)
        return {"succeeded": True}


def _repo(
    es: FakeEs, rank_ahead: bool = True, ahead_pages: int = 0, pages_ahead: int = 0
) -> Repository:
    """`pages_ahead` 0 by default: the rankings' own order of requests (pages fetched
    ahead: the tests at the end)."""
    return Repository(
        es,  # type: ignore[arg-type]
        IndexNames("t-"),
        max_result_window=100,
        window_pages=PAGES,
        window_min_matches=1,
        rank_ahead=rank_ahead,
        rank_ahead_pages=ahead_pages,
        pages_ahead=pages_ahead,
    )


def _count(counter: Any, outcome: str) -> float:
    return float(counter.labels(outcome)._value.get())


async def _walk(repo: Repository, between: Any = None) -> list[str]:
    ids: list[str] = []
    cursor = None
    for n in range(50):
        req = SearchRequest(q="revenue", limit=LIMIT, cursor=cursor)
        answer = await repo.extension_search(req)
        ids += [f"d{hit.artifact['n']:02d}" for hit in answer.hits]
        cursor = answer.next_cursor
        if cursor is None:
            return ids
        if between is not None:
            await between(n)
    raise AssertionError("the walk did not end")


async def _paced(_: int) -> None:
    for _ in range(5):  # a client between pages: the background ranking runs
        await asyncio.sleep(0)


async def test_a_paced_walk_ranks_only_its_first_window_in_a_request() -> None:
    es = FakeEs()
    started = _count(RANKED_AHEAD, "started")
    assert await _walk(_repo(es), _paced) == [h["_id"] for h in RANKING]
    # page 1 is a plain search, page 2 ranks pages 2-4 beside itself in one `_msearch`;
    # every later window was ranked in the background before its first page was asked
    assert es.msearches == 1
    # windows from hit 8 on: 8-13, 14-19, 20-22 (the last short: the walk ends in it)
    assert _count(RANKED_AHEAD, "started") - started == 3
    ahead = [b for b in es.searches if b.get("_source") is False]
    assert [_after(b["search_after"]) for b in ahead] == [8, 14, 20]
    assert all(b["size"] == LIMIT * PAGES and "highlight" not in b for b in ahead)
    assert es.closed == ["pit-1"]  # the last page closes the point in time


async def test_the_next_window_is_ranked_while_the_last_page_of_this_one_is_still_to_come() -> None:
    es = FakeEs()
    started = _count(RANKED_AHEAD, "started")
    awaited = _count(RANKED_AHEAD, "awaited")
    assert await _walk(_repo(es, ahead_pages=1), _paced) == [h["_id"] for h in RANKING]
    assert es.msearches == 1
    # each window of 3 pages starts its successor's ranking from its second page, so
    # every window's last page (d06-d07, d12-d13, d18-d19) is fetched after that ranking
    # was sent: the same rankings as ranking when a window is used up, one page earlier
    assert _count(RANKED_AHEAD, "started") - started == 3
    assert _count(RANKED_AHEAD, "awaited") == awaited
    rankings = [i for i, b in enumerate(es.searches) if b.get("_source") is False]
    assert [_after(es.searches[i]["search_after"]) for i in rankings] == [8, 14, 20]
    lasts = ({"d06", "d07"}, {"d12", "d13"}, {"d18", "d19"})
    for i, last_page in zip(rankings, lasts, strict=True):
        later = [_fetched(b) for b in es.searches[i + 1 :]]
        assert last_page in later, f"{sorted(last_page)} was fetched before the next ranking"
    # the short last window (3 hits of 6) ranks nothing after it
    assert all(_after(b["search_after"]) <= 20 for b in es.searches if b.get("_source") is False)


async def test_a_walk_without_pauses_is_exact_when_rankings_run_ahead() -> None:
    es = FakeEs()
    for ahead in (0, 1, 2, 5):
        es.searches.clear()
        assert await _walk(_repo(es, ahead_pages=ahead)) == [h["_id"] for h in RANKING]


async def test_a_page_asked_while_its_window_is_ranked_waits_for_it() -> None:
    es = FakeEs()
    repo = _repo(es)
    awaited = _count(RANKED_AHEAD, "awaited")
    remembered = _count(WINDOWED_PAGES, "remembered")

    async def hold_then_release(n: int) -> None:
        if n == 3:  # page 4 used up the first window: its successor is being ranked
            es.gate.clear()
            asyncio.get_running_loop().call_later(0.01, es.gate.set)

    es.gate.set()
    walked = await _walk(repo, hold_then_release)
    assert walked == [h["_id"] for h in RANKING]
    assert _count(RANKED_AHEAD, "awaited") - awaited >= 1
    assert es.msearches == 1  # nothing ranked again in a request
    assert _count(WINDOWED_PAGES, "remembered") - remembered == 12 - 2


async def test_without_ranking_ahead_every_window_ranks_in_a_request() -> None:
    es = FakeEs()
    started = _count(RANKED_AHEAD, "started")
    assert await _walk(_repo(es, rank_ahead=False), _paced) == [h["_id"] for h in RANKING]
    assert es.msearches == 4  # pages 2, 5, 8 and 11 rank their windows
    assert _count(RANKED_AHEAD, "started") == started


async def test_a_failed_ranking_ahead_leaves_the_page_to_rank_as_usual() -> None:
    es = FakeEs()

    async def failing(*, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        if body.get("_source") is False:
            raise EsConnectionError("down")
        return await FakeEs.search(es, body=body, **kw)

    es.search = failing  # type: ignore[method-assign]
    assert await _walk(_repo(es), _paced) == [h["_id"] for h in RANKING]
    assert es.msearches == 4  # each failed ranking: the next window ranked in its page


async def test_closing_stops_the_rankings_in_flight() -> None:
    es = FakeEs()
    repo = _repo(es)
    cursor = None
    for _ in range(4):  # page 4 uses up the first window: its successor starts ranking
        answer = await repo.extension_search(SearchRequest(q="revenue", limit=LIMIT, cursor=cursor))
        cursor = answer.next_cursor
    es.gate.clear()  # the ranking has not run yet: it waits for the gate
    await asyncio.sleep(0)
    pending = list(repo._ahead.values())
    assert len(pending) == 1 and not pending[0].done()
    await repo.aclose()
    assert pending[0].cancelled() and not repo._ahead


# -- the next page fetched in the background once a cursor page is answered ---------------


def _requests(es: FakeEs) -> list[str]:
    """Every search sent, as comparable text, in no particular order."""
    return sorted(json.dumps(b, sort_keys=True) for b in es.searches)


async def test_each_page_after_the_first_cursor_page_is_taken_from_its_fetch_ahead() -> None:
    for between in (_paced, None):  # a client that pauses, one that asks at once
        plain, ahead = FakeEs(), FakeEs()
        assert await _walk(_repo(plain), between) == [h["_id"] for h in RANKING]
        taken = _count(PAGES_AHEAD, "taken")
        assert await _walk(_repo(ahead, pages_ahead=8), between) == [h["_id"] for h in RANKING]
        # 12 pages: the first is plain, the second (the first with a cursor) is asked;
        # each of the other ten was fetched once the page before it was answered
        assert _count(PAGES_AHEAD, "taken") - taken == 10
        # ... by the very requests the walk sends without fetching ahead: nothing more
        assert _requests(ahead) == _requests(plain)
        assert ahead.msearches == plain.msearches == 1
        assert ahead.closed == plain.closed == ["pit-1"]  # once, when the last page is answered


async def test_a_page_fetched_ahead_that_failed_is_asked_again() -> None:
    es = FakeEs()
    failed: list[set[str]] = []

    async def failing_once(*, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        if _fetched(body) == {"d10", "d11"} and not failed:
            failed.append(_fetched(body))
            raise EsConnectionError("down")
        return await FakeEs.search(es, body=body, **kw)

    es.search = failing_once  # type: ignore[method-assign]
    taken = _count(PAGES_AHEAD, "taken")
    assert await _walk(_repo(es, pages_ahead=8), _paced) == [h["_id"] for h in RANKING]
    assert failed == [{"d10", "d11"}]
    assert _count(PAGES_AHEAD, "taken") - taken == 9  # page 6 was asked again
    assert es.closed == ["pit-1"]


async def test_pages_fetched_ahead_are_bounded_and_a_dropped_one_is_asked_again() -> None:
    es = FakeEs()
    repo = _repo(es, pages_ahead=1)
    evicted = _count(PAGES_AHEAD, "evicted")
    walks = {}
    for q in ("revenue", "report"):  # two walks, each to its first cursor page
        first = await repo.extension_search(SearchRequest(q=q, limit=LIMIT))
        assert first.next_cursor is not None
        second = await repo.extension_search(
            SearchRequest(q=q, limit=LIMIT, cursor=first.next_cursor)
        )
        walks[q] = second.next_cursor
        await _paced(0)
    # the second walk's fetch ahead dropped the first walk's: one kept
    assert _count(PAGES_AHEAD, "evicted") - evicted == 1
    assert len(repo._pages) == 1
    taken = _count(PAGES_AHEAD, "taken")
    third = await repo.extension_search(
        SearchRequest(q="revenue", limit=LIMIT, cursor=walks["revenue"])
    )
    assert _count(PAGES_AHEAD, "taken") == taken  # asked: the walk goes on, exactly
    assert [f"d{h.artifact['n']:02d}" for h in third.hits] == ["d04", "d05"]
    await repo.aclose()


async def test_a_deferred_fetch_ahead_starts_only_when_the_api_runs_it() -> None:
    es = FakeEs()
    repo = _repo(es, pages_ahead=8)
    first = await repo.extension_search(SearchRequest(q="revenue", limit=LIMIT))
    second = await repo.extension_search(
        SearchRequest(q="revenue", limit=LIMIT, cursor=first.next_cursor)
    )
    deferred: list[Any] = []
    third = await repo.extension_search(
        SearchRequest(q="revenue", limit=LIMIT, cursor=second.next_cursor), deferred.append
    )
    await _paced(0)
    asked = len(es.searches)
    assert len(deferred) == 1 and not repo._pages  # page 3 was taken from page 2's fetch
    assert not any(_fetched(b) == {"d06", "d07"} for b in es.searches)  # page 4: not yet
    deferred[0]()  # the API: once page 3's answer is sent
    await _paced(0)
    assert [_fetched(b) for b in es.searches[asked:]].count({"d06", "d07"}) == 1
    taken = _count(PAGES_AHEAD, "taken")
    fourth = await repo.extension_search(
        SearchRequest(q="revenue", limit=LIMIT, cursor=third.next_cursor)
    )
    assert _count(PAGES_AHEAD, "taken") - taken == 1
    assert [f"d{h.artifact['n']:02d}" for h in fourth.hits] == ["d06", "d07"]
    await repo.aclose()

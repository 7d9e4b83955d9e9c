"""Elasticsearch adapter of the query service: run translated searches and counts.

Hits come back already in Prefect's response shape (`_source` filtering), so
the service returns them without re-validating. Windows deeper than
`max_result_window` are walked with `search_after` under a point in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError, TransportError
from prometheus_client import Counter

from query.extension import (
    PIT_KEEP_ALIVE,
    CursorError,
    SearchRequest,
    SearchResponse,
    build_body,
    decode_cursor,
    encode_cursor,
    fingerprint,
    read_facets,
    read_hits,
)
from query.paging import EmptyPlan, FromSizePlan, SearchAfterPlan, plan_paging
from query.resume import Boundaries, End, Start, at_or_before, bound_helps, shape_key
from query.search import build_count_body, build_search_body, source_fields
from query.sort import SortClause
from query.translate import Query
from query.windows import (
    Window,
    Windows,
    in_order,
    next_window_after,
    ranked,
    split,
    window_size,
    worth_a_window,
)
from services.documents import collection_id
from services.errors import BackendUnavailableError, ServiceError, TranslationError
from services.es.indices import SCHEMA_VERSION, IndexNames, outdated_indices

_TOO_COMPLEX_MARKERS = (
    "determinizing automaton",
    "too_complex_to_determinize",
    "too_many_clauses",
    "too_many_nested_clauses",
    "maxclausecount",
)


class QueryTooComplexError(TranslationError):
    """Elasticsearch refused to build the query (e.g. a ``like_`` automaton too large)."""


def _reasons(exc: ApiError) -> str:
    """The error types and reasons of an Elasticsearch error body, lowercased."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("type", "reason"):
                if isinstance(node.get(key), str):
                    parts.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(exc.body)
    return " ".join(parts).lower()


def _unavailable(exc: Exception) -> ServiceError:
    """Map any failure of the Elasticsearch client to what the API answers.

    Connection problems, timeouts, 429s, 5xx, a missing index and anything else
    Elasticsearch refuses become ``BackendUnavailableError`` (HTTP 503), except a
    query Elasticsearch cannot build because it is too complex, which is the
    caller's doing: ``QueryTooComplexError`` (HTTP 422).
    """
    if isinstance(exc, ApiError):
        reasons = _reasons(exc)
        if exc.status_code == 400 and any(m in reasons for m in _TOO_COMPLEX_MARKERS):
            return QueryTooComplexError(
                "The filter is too complex for the search backend (a like_ value too long "
                "or with too many wildcards); Elasticsearch refused it: " + _first_reason(exc)
            )
        if "index_not_found" in reasons:
            return BackendUnavailableError(
                "Elasticsearch is reachable but the artifact index does not exist."
            )
        return BackendUnavailableError(
            f"Elasticsearch could not answer (HTTP {exc.status_code} {exc.error})."
        )
    return BackendUnavailableError(f"Elasticsearch is unavailable: {type(exc).__name__}")


def _first_reason(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            causes = error.get("root_cause")
            if isinstance(causes, list) and causes and isinstance(causes[0], dict):
                return str(causes[0].get("reason", ""))[:300]
            return str(error.get("reason", ""))[:300]
    return str(exc.error)[:300]


class CursorExpiredError(CursorError):
    """The point in time of a cursor is gone (kept alive for 5 minutes between pages)."""


def _search_error(exc: Exception) -> ServiceError:
    """What the search extension answers for a failure of Elasticsearch."""
    if isinstance(exc, ApiError):
        reasons = _reasons(exc)
        if exc.status_code == 404 and "search_context_missing" in reasons:
            return CursorExpiredError(
                "The cursor expired (5 minutes without a page): start the search again."
            )
        if "too_many_buckets" in reasons:  # search.max_buckets, beyond our own bound
            return TranslationError(
                "The created histogram has too many buckets for Elasticsearch: choose a "
                "wider histogram or a narrower created range."
            )
        if exc.status_code == 400 and not any(m in reasons for m in _TOO_COMPLEX_MARKERS):
            return TranslationError("The query could not be run: " + _first_reason(exc))
    return _unavailable(exc)


_ES_ERRORS = (TransportError, ApiError)

PAGE_BOUNDS = Counter(
    "query_page_bounds_total",
    "Pages of Prefect's endpoints asked again, searched only among the documents at or "
    "before the page's remembered end (bounded), or searched again without it because "
    "that prefix no longer held the whole page (short)",
    ["outcome"],
)
PAGE_CONTINUATIONS = Counter(
    "query_page_continuations_total",
    "Pages of Prefect's endpoints asked after a remembered page boundary: continued from it, "
    "or searched from the start because documents moved across it (moved) or the "
    "continuation's search failed (failed)",
    ["outcome"],
)
"""Everything the Elasticsearch client raises: transport failures and error answers."""

WINDOWED_PAGES = Counter(
    "query_search_windowed_pages_total",
    "Relevance cursor pages of the search extension: ranked with the next pages' window "
    "(ranked), fetched from a remembered window (remembered), ranked and found to match too "
    "few artifacts for windows (small: the walk's next pages rank as usual), or searched "
    "again because an answer was not the window's hits (refused)",
    ["outcome"],
)

RANKED_AHEAD = Counter(
    "query_search_windows_ranked_ahead_total",
    "Windows of relevance cursor pages ranked in the background when the window before ran "
    "out (started), and pages that had to wait for one still being ranked (awaited)",
    ["outcome"],
)


PAGES_AHEAD = Counter(
    "query_search_pages_ahead_total",
    "Cursor pages of the search extension fetched in the background after the page before "
    "was answered (started), answered from that fetch (taken), or dropped unasked to keep "
    "at most `QUERY_PAGES_AHEAD` (evicted)",
    ["outcome"],
)


_Page = tuple[SearchResponse, str | None]
"""A page of the search extension and the point in time to close once it is answered."""


def _now(start: Callable[[], None]) -> None:
    start()


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Mark a background task's failure as seen (its page is asked again if needed)."""
    if not task.cancelled():
        task.exception()


def _raise_missing_index(resp: Any) -> None:
    """A get with ``ignore_status=404`` answers an error body when the index is missing."""
    if "error" in resp:
        raise BackendUnavailableError(
            "Elasticsearch is reachable but the artifact index does not exist."
        )


def _up_to(query: Query, sort: Sequence[SortClause], end: End | None) -> Query:
    """`query` among the documents that sort at or before `end` (all of them without)."""
    if end is None:
        return query
    return {"bool": {"filter": [query, at_or_before(sort, end.values)]}}


class Repository:
    """Searches over the artifact and collection aliases."""

    def __init__(
        self,
        es: AsyncElasticsearch,
        names: IndexNames,
        max_result_window: int,
        page_boundaries: int = 1024,
        window_pages: int = 20,
        windows: int = 128,
        window_min_matches: int = 20_000,
        request_cache: bool = True,
        rank_ahead: bool = True,
        rank_ahead_pages: int = 10,
        pages_ahead: int = 64,
    ) -> None:
        self.es = es
        # Elasticsearch's shard request cache for every search (by default it caches only
        # searches without hits): an identical search is answered from it until the
        # shard's next refresh that changed documents, so answers stay exact
        self._cache: bool | None = True if request_cache else None  # None: the default
        self._whole: dict[str, Any] = {"allow_partial_search_results": False}  # _msearch
        if request_cache:
            self._whole["request_cache"] = True
        self.names = names
        self.max_result_window = max_result_window
        self.boundaries = Boundaries(page_boundaries)
        # relevance cursor pages ranked `window_pages` at a time (query/windows.py)
        self.window_pages = window_pages
        self.window_min_matches = window_min_matches
        self.windows = Windows(windows)
        # windows being ranked in the background, by the key they will be remembered under
        # ... starting when `rank_ahead_pages` pages or fewer of a window are left (0: used up)
        self.rank_ahead = rank_ahead
        self.rank_ahead_pages = rank_ahead_pages
        self._ahead: dict[bytes, asyncio.Task[Window | None]] = {}
        # the next page of a cursor walk, fetched once a page was answered, by the
        # (cursor, request) it answers; at most `pages_ahead` (0: none), oldest dropped
        self.pages_ahead = pages_ahead
        self._pages: OrderedDict[tuple[str, str], asyncio.Task[_Page]] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def _index(self, collection: bool) -> str:
        return self.names.collections if collection else self.names.artifacts

    async def search(
        self,
        query: Query,
        sort: Sequence[SortClause],
        offset: int,
        limit: int,
        collection: bool,
    ) -> list[dict[str, Any]]:
        """The page of response objects, in Prefect's order.

        A page that starts at (or up to ``limit`` hits after) a page boundary this
        process has seen for the same query continues from there (`query.resume`);
        otherwise it is searched from the start, and its boundaries are remembered.
        """
        plan = plan_paging(offset, limit, self.max_result_window)
        if isinstance(plan, EmptyPlan):
            return []
        index = self._index(collection)
        shape = shape_key(index, query, sort) if self.boundaries.enabled else b""
        try:
            # a continuation fetches its skipped hits too: keep within the result window
            max_skip = min(limit, self.max_result_window - limit)
            start = self.boundaries.start(shape, offset, max_skip) if max_skip >= 0 else None
            end = self._end(shape, sort, offset, limit)
            if start is not None:
                page = await self._continue(
                    index, shape, query, sort, start, limit, collection, end
                )
                if page is not None:
                    return page
            if isinstance(plan, FromSizePlan):
                return await self._from_start(index, shape, query, sort, plan, collection, end)
            return await self._walk(index, shape, query, sort, plan, collection)
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc

    def _end(self, shape: bytes, sort: Sequence[SortClause], offset: int, limit: int) -> End | None:
        """The remembered end of this page (or of one at most `limit` hits after it) when
        searching only up to it is cheaper (`query.resume.bound_helps`)."""
        if not self.boundaries.enabled or limit < 1 or not bound_helps(sort):
            return None
        return self.boundaries.end(shape, offset + limit, limit)

    def _bound_held(self, shape: bytes, end: End, hits: int, wanted: int) -> bool:
        """Whether the documents at or before `end` held the `wanted` hits. Fewer means
        documents were deleted or moved since: the bound is forgotten, and the caller
        searches the page again without it."""
        if hits < wanted:
            self.boundaries.forget(shape, end.boundary)
            PAGE_BOUNDS.labels("short").inc()
            return False
        PAGE_BOUNDS.labels("bounded").inc()
        return True

    def _remember(
        self, shape: bytes, sort: Sequence[SortClause], end: int, hit: dict[str, Any]
    ) -> None:
        """``hit`` is at position ``end - 1`` of the ranking.

        Under a point in time Elasticsearch appends its own tie-breaker to the sort
        values; the sort is total without it, and it means nothing outside that PIT.
        """
        self.boundaries.remember(shape, end, hit["sort"][: len(sort)])

    def _remember_end(
        self, shape: bytes, sort: Sequence[SortClause], first: int, page: list[dict[str, Any]]
    ) -> None:
        """``page`` holds positions ``first``, ``first + 1``, ...: its end is a boundary."""
        if page:
            self._remember(shape, sort, first + len(page), page[-1])

    async def _from_start(
        self,
        index: str,
        shape: bytes,
        query: Query,
        sort: Sequence[SortClause],
        plan: FromSizePlan,
        collection: bool,
        end: End | None = None,
    ) -> list[dict[str, Any]]:
        # one hit more in front (its sort values are the boundary before this page)
        before = 1 if plan.from_ > 0 and self.boundaries.enabled else 0
        body = build_search_body(
            _up_to(query, sort, end),
            sort,
            collection=collection,
            size=plan.size + before,
            from_=plan.from_ - before,
        )
        resp = await self.es.search(
            index=index,
            body=body,
            filter_path="hits.hits._source,hits.hits.sort",
            allow_partial_search_results=False,
            request_cache=self._cache,
        )
        hits = resp.get("hits", {}).get("hits", [])
        if end is not None and not self._bound_held(shape, end, len(hits), plan.size + before):
            return await self._from_start(index, shape, query, sort, plan, collection)
        if before and hits:
            self._remember(shape, sort, plan.from_, hits[0])
        page = hits[before:]
        self._remember_end(shape, sort, plan.from_, page)
        return [hit["_source"] for hit in page]

    async def _continue(
        self,
        index: str,
        shape: bytes,
        query: Query,
        sort: Sequence[SortClause],
        start: Start,
        limit: int,
        collection: bool,
        end: End | None = None,
    ) -> list[dict[str, Any]] | None:
        """The page after a remembered boundary, or None when documents moved across it.

        Two searches of one point in time, in one ``_msearch``: the page after the
        boundary, and the number of matches at or before it. One search with the count
        as an aggregation would be exact too, but an aggregation makes Elasticsearch
        collect every match, which turns off the sort's skipping of non-competitive
        documents (at 1M artifacts: 70-80 ms for a ``KEY_ASC`` page at offset 10,000,
        against 33-38 ms this way). The point in time makes both see the same
        documents; it is closed in the background. With the page's remembered `end`, the
        page is searched only among the documents at or before it.
        """
        page_body = build_search_body(
            _up_to(query, sort, end),
            sort,
            collection=collection,
            size=start.skip + limit,
            search_after=start.values,
        )
        count_body = {
            "size": 0,
            "track_total_hits": True,
            "query": {"bool": {"filter": [query, at_or_before(sort, start.values)]}},
        }
        answers = await self._in_one_pit(
            index,
            [page_body, count_body],
            filter_path="responses.hits.hits._source,responses.hits.hits.sort,"
            "responses.hits.total.value,responses.error.type,responses.status",
        )
        if answers is None:
            # the continuation is only a shortcut: the page is searched from the start
            PAGE_CONTINUATIONS.labels("failed").inc()
            return None
        counted = answers[1].get("hits", {}).get("total", {}).get("value")
        if counted != start.boundary:
            self.boundaries.forget(shape, start.boundary)
            PAGE_CONTINUATIONS.labels("moved").inc()
            return None
        hits = answers[0].get("hits", {}).get("hits", [])
        if end is not None and not self._bound_held(shape, end, len(hits), start.skip + limit):
            return await self._continue(index, shape, query, sort, start, limit, collection)
        PAGE_CONTINUATIONS.labels("continued").inc()
        page = hits[start.skip :]
        self._remember_end(shape, sort, start.boundary + start.skip, page)
        return [hit["_source"] for hit in page]

    async def _in_one_pit(
        self, index: str, bodies: list[dict[str, Any]], filter_path: str | None = None
    ) -> list[dict[str, Any]] | None:
        """The answers of `bodies`, searched in one `_msearch` over one new point in time
        (so they see the same documents), or None when any of them failed. The point in
        time is closed in the background."""
        pit_id = (await self.es.open_point_in_time(index=index, keep_alive="30s"))["id"]
        whole = self._whole  # a shard failure is an error
        try:
            searches: list[dict[str, Any]] = []
            for body in bodies:
                searches += [whole, {**body, "pit": {"id": pit_id}}]
            resp = await self.es.msearch(searches=searches, filter_path=filter_path)
        finally:
            self._close_later(pit_id)
        answers: list[dict[str, Any]] = resp.get("responses", [])
        if len(answers) != len(bodies) or any("error" in a for a in answers):
            return None
        return answers

    def _close_later(self, pit_id: str) -> None:
        """Close a point in time without waiting for it (it expires anyway)."""

        async def close() -> None:
            with contextlib.suppress(*_ES_ERRORS):
                await self.es.close_point_in_time(id=pit_id)

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _walk(
        self,
        index: str,
        shape: bytes,
        query: Query,
        sort: Sequence[SortClause],
        plan: SearchAfterPlan,
        collection: bool,
    ) -> list[dict[str, Any]]:
        pit = await self.es.open_point_in_time(index=index, keep_alive="1m")
        pit_id = pit["id"]
        out: list[dict[str, Any]] = []
        try:
            after: list[Any] | None = None
            seen = 0
            for size in plan.page_sizes():
                keep_from = max(plan.skip - seen, 0)
                body = build_search_body(
                    query,
                    sort,
                    collection=collection,
                    size=size,
                    search_after=after,
                    with_source=keep_from < size,
                )
                body["pit"] = {"id": pit_id, "keep_alive": "1m"}
                resp = await self.es.search(
                    body=body, allow_partial_search_results=False, request_cache=self._cache
                )
                hits = resp["hits"]["hits"]
                pit_id = resp.get("pit_id", pit_id)
                if 0 < keep_from <= len(hits):  # the hit just before the page
                    self._remember(shape, sort, plan.skip, hits[keep_from - 1])
                out.extend(hits[keep_from:])
                seen += len(hits)
                if len(hits) < size:
                    break
                after = hits[-1]["sort"]
        finally:
            with contextlib.suppress(*_ES_ERRORS):
                await self.es.close_point_in_time(id=pit_id)
        page = out[: plan.take]
        self._remember_end(shape, sort, plan.skip, page)
        return [hit["_source"] for hit in page]

    async def count(self, query: Query, collection: bool) -> int:
        """The exact number of matching documents."""
        try:
            resp = await self.es.count(index=self._index(collection), body=build_count_body(query))
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        return int(resp["count"])

    async def get_artifact(self, artifact_id: str) -> dict[str, Any] | None:
        """One live artifact by id (realtime), or None."""
        try:
            resp = await self.es.options(ignore_status=404).get(
                index=self.names.artifacts,
                id=artifact_id,
                source_includes=[*source_fields(False), "live"],
            )
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        _raise_missing_index(resp)
        if not resp.get("found"):
            return None
        source: dict[str, Any] = resp["_source"]
        if not source.pop("live", False):
            return None
        return source

    async def latest_by_key(self, key: str) -> dict[str, Any] | None:
        """Prefect's `/{key}/latest`: the key's collection, shaped as an artifact.

        Prefect validates the collection row as an `Artifact`, so the answer carries
        the collection's own id and no `latest_id`.
        """
        try:
            resp = await self.es.options(ignore_status=404).get(
                index=self.names.collections,
                id=collection_id(key),
                source_includes=[*source_fields(False), "live"],
            )
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        _raise_missing_index(resp)
        if not resp.get("found"):
            return None
        source: dict[str, Any] = resp["_source"]
        if not source.pop("live", False):  # a key whose artifacts were all deleted
            return None
        return source if source.get("key") == key else None

    async def extension_search(
        self, req: SearchRequest, defer: Callable[[Callable[[], None]], None] | None = None
    ) -> SearchResponse:
        """A page of the search extension (query/extension.py, docs/search.md).

        The first page is a plain search; its cursor holds the last hit's sort values.
        The first page asked with a cursor opens a point in time, which every later page
        reuses (and keeps alive): only clients that do page hold a point in time.

        Once a page asked with a cursor is answered, the page after it is fetched in the
        background (`_fetch_ahead`; handed to `defer` when given, which the API runs once
        the answer is sent, so the fetch does not compete with sending it), and asking for
        it takes that answer. Exact: both are
        the same request under the same point in time, which sees the same documents
        whenever it is asked (a write made after the fetch is outside the walk's snapshot
        either way).
        """
        page: _Page | None = None
        if req.cursor is not None and self._pages:
            ahead = self._pages.pop((req.cursor, fingerprint(req)), None)
            if ahead is not None:
                with contextlib.suppress(Exception):  # failed: asked again, as usual
                    page = await ahead
                if page is not None:
                    PAGES_AHEAD.labels(outcome="taken").inc()
        if page is None:
            page = await self._page(req)
        response, finished = page
        if finished is not None:  # the last page: the point in time is no longer needed
            with contextlib.suppress(*_ES_ERRORS):
                await self.es.close_point_in_time(id=finished)
        elif req.cursor is not None and response.next_cursor is not None and self.pages_ahead:
            follow = req.model_copy(update={"cursor": response.next_cursor})
            (defer or _now)(partial(self._fetch_ahead, follow))
        return response

    def _fetch_ahead(self, req: SearchRequest) -> None:
        """Fetch the page `req` asks for in the background, to be taken when it is asked.
        At most `pages_ahead` are kept (in flight or answered): the oldest is dropped, and
        the point in time of a dropped last page closed (others expire unused)."""
        key = (req.cursor or "", fingerprint(req))
        if key in self._pages:
            return
        task = asyncio.create_task(self._page(req))
        task.add_done_callback(_retrieved)
        self._pages[key] = task
        PAGES_AHEAD.labels(outcome="started").inc()
        while len(self._pages) > self.pages_ahead:
            _, old = self._pages.popitem(last=False)
            PAGES_AHEAD.labels(outcome="evicted").inc()
            if not old.done():
                old.cancel()
            elif not old.cancelled() and old.exception() is None and (pit := old.result()[1]):
                self._close_later(pit)

    async def _page(self, req: SearchRequest) -> _Page:
        """A page of the search extension, and the point in time to close once it is
        answered (its walk's last page; None otherwise)."""
        index = self._index(req.latest_per_key)
        body = build_body(req, first_page=req.cursor is None)
        pit_id: str | None = None
        try:
            if req.cursor is not None:
                pit_id, after = decode_cursor(req.cursor, req)
                if not pit_id:
                    opened = await self.es.open_point_in_time(
                        index=index, keep_alive=PIT_KEEP_ALIVE
                    )
                    pit_id = str(opened["id"])
                body["pit"] = {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE}
                windowed = None
                bound = fingerprint(req)
                if (
                    self.window_pages > 1
                    and req.limit
                    and "_score" in body["sort"][0]
                    and not self.windows.is_small(Windows.walk(pit_id, bound))
                ):
                    windowed = await self._windowed_page(body, pit_id, after, req, bound)
                if windowed is not None:
                    return windowed
                body["search_after"] = after
                resp = await self.es.search(
                    body=body, allow_partial_search_results=False, request_cache=self._cache
                )
                pit_id = resp.get("pit_id", pit_id)
            elif "aggs" in body and req.limit:
                resp = await self._hits_and_facets(index, body)
            else:
                resp = await self.es.search(
                    index=index,
                    body=body,
                    allow_partial_search_results=False,
                    request_cache=self._cache,
                )
        except _ES_ERRORS as exc:
            raise _search_error(exc) from exc
        answer: dict[str, Any] = resp if isinstance(resp, dict) else resp.body
        hits = answer.get("hits", {}).get("hits", [])
        next_cursor = None
        finished = None
        if req.limit and len(hits) == req.limit:
            # (a point in time appends its own tie-breaker; the sort is total without it)
            after = hits[-1]["sort"] if pit_id else hits[-1]["sort"][: len(body["sort"])]
            next_cursor = encode_cursor(pit_id or "", after, req)
        elif pit_id:  # the last page
            finished = pit_id
        total = answer.get("hits", {}).get("total", {}).get("value") if req.track_total else None
        response = SearchResponse(
            hits=read_hits(answer),
            next_cursor=next_cursor,
            total=total,
            facets=read_facets(answer, req),
        )
        return response, finished

    async def _windowed_page(
        self,
        body: dict[str, Any],
        pit_id: str,
        after: list[Any],
        req: SearchRequest,
        bound: str,
    ) -> _Page | None:
        """A relevance cursor page from a window of ranked hits (query/windows.py).

        With a window remembered under this cursor, the page's hits are fetched by id.
        Without, the window is ranked and the page searched as usual, side by side in one
        `_msearch` (each scores every match, on a thread of its own: the page takes as
        long as without windows), and the page must be the window's first hits. None when
        a search failed or an answer is not the window's hits in order (never expected):
        the caller then searches as without windows. `bound`: the request's fingerprint.
        When a full page leaves `rank_ahead_pages` pages or fewer of its window (0: none),
        the next window is ranked in the background (`_rank_ahead`); the page asked after
        the window takes it, or waits for it if still ranking."""
        key = Windows.key(pit_id, after, bound)
        window = self.windows.take(key)
        if window is None and (ahead := self._ahead.pop(key, None)) is not None:
            RANKED_AHEAD.labels(outcome="awaited").inc()
            try:
                window = await ahead  # ranked in the background, not done yet
            except Exception:  # never expected: the page ranks as usual
                window = None
        pit = {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE}
        rank = {k: v for k, v in body.items() if k != "highlight"}
        rank.update(size=window_size(req.limit, self.window_pages), _source=False)
        if not req.track_total:  # every match is scored anyway: counting is cheap
            rank["track_total_hits"] = max(self.window_min_matches, 1)
        if window is None:
            whole = self._whole  # a shard failure is an error
            page_body = {**body, "search_after": after, "pit": pit}
            resp = await self.es.msearch(
                searches=[whole, {**rank, "search_after": after, "pit": pit}, whole, page_body]
            )
            answers: list[dict[str, Any]] = resp.get("responses", [])
            if len(answers) != 2 or any("error" in a for a in answers):
                return None
            ranking, answer = answers
            counted = ranking.get("hits", {}).get("total")
            total = counted.get("value") if counted and req.track_total else None
            hits = ranking.get("hits", {}).get("hits", [])
            window = Window(ranked(hits), total, more=len(hits) >= rank["size"])
            outcome = "ranked"
            if not worth_a_window(counted, self.window_min_matches):
                self.windows.mark_small(Windows.walk(answer.get("pit_id", pit_id), bound))
                window = Window(window.hits[: req.limit], total)  # nothing to remember
                outcome = "small"
        else:
            page, _ = split(window, req.limit)
            fetch = {
                **body,
                "query": {
                    "bool": {
                        "must": [body["query"]],
                        "filter": [{"ids": {"values": [r.doc_id for r in page]}}],
                    }
                },
                "size": len(page),
                "track_total_hits": False,
                "pit": pit,
            }
            resp = await self.es.search(
                body=fetch, allow_partial_search_results=False, request_cache=self._cache
            )
            answer = resp if isinstance(resp, dict) else resp.body
            outcome = "remembered"
        pit_id = answer.get("pit_id", pit_id)
        page, rest = split(window, req.limit)
        if not in_order(page, answer.get("hits", {}).get("hits", [])):
            WINDOWED_PAGES.labels(outcome="refused").inc()
            return None
        WINDOWED_PAGES.labels(outcome=outcome).inc()
        next_cursor = None
        if len(page) == req.limit:
            next_cursor = encode_cursor(pit_id, page[-1].sort, req)
            if rest is not None:
                self.windows.put(Windows.key(pit_id, page[-1].sort, bound), rest)
            end = next_window_after(window, rest, req.limit, self.rank_ahead_pages)
            if outcome != "small" and self.rank_ahead and end is not None:
                self._rank_ahead(
                    Windows.key(pit_id, end, bound),
                    {
                        **rank,
                        "search_after": end,
                        "pit": {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE},
                    },
                    req.track_total,
                )
        response = SearchResponse(
            hits=read_hits(answer),
            next_cursor=next_cursor,
            total=window.total,  # None unless the request tracks totals
            facets=None,
        )
        return response, None if next_cursor else pit_id  # the last page: close it

    async def aclose(self) -> None:
        """Stop the windows being ranked and the pages fetched in the background (before
        the client closes)."""
        ahead: list[asyncio.Task[Any]] = [*self._ahead.values(), *self._pages.values()]
        self._ahead, self._pages = {}, OrderedDict()
        for task in ahead:
            task.cancel()
        await asyncio.gather(*ahead, return_exceptions=True)

    def _rank_ahead(self, key: bytes, rank: dict[str, Any], track_total: bool) -> None:
        """Rank the window after a window nearly or wholly answered, in the background, to
        be remembered under `key` (the cursor the window's last page hands out): the walk's
        page after the window then finds it ranked, or waits for the rest of its ranking
        instead of ranking. Exact as any window: the same query under the same point in
        time. At most `windows` at once."""
        if key in self._ahead or key in self.windows or len(self._ahead) >= self.windows.capacity:
            return  # already ranked or ranking (a walk's later pages ask again)

        async def ranking() -> Window | None:
            try:
                resp = await self.es.search(
                    body=rank, allow_partial_search_results=False, request_cache=self._cache
                )
            except _ES_ERRORS:
                return None  # the page that needs it ranks as usual
            answer = resp if isinstance(resp, dict) else resp.body
            counted = answer.get("hits", {}).get("total")
            total = counted.get("value") if counted and track_total else None
            hits = answer.get("hits", {}).get("hits", [])
            return Window(ranked(hits), total, more=len(hits) >= rank["size"])

        def done(task: asyncio.Task[Window | None]) -> None:
            if self._ahead.get(key) is not task:
                return  # a page took it while it was running
            del self._ahead[key]
            if not task.cancelled() and task.exception() is None and (window := task.result()):
                self.windows.put(key, window)

        task = asyncio.create_task(ranking())
        self._ahead[key] = task
        task.add_done_callback(done)
        RANKED_AHEAD.labels(outcome="started").inc()

    async def _hits_and_facets(self, index: str, body: dict[str, Any]) -> Any:
        """A first page with facets: its hits and its facet counts as two searches of one
        point in time, sent together in one `_msearch`, answered as one search would be.

        In one search the aggregations make Elasticsearch score and collect every match
        for the hits too (no skipping of documents that cannot make the page) and run it
        all on one thread; apart, the counts run without scores, beside the hits (at 1M
        artifacts, six facets: 41-109 ms in one search, 22-74 ms apart). The point in
        time makes both see the same documents; it is closed in the background. If
        either search fails, the single search is run, so its error is the one answered.
        """
        aggs = body.pop("aggs")
        counts = {"query": body["query"], "size": 0, "track_total_hits": False, "aggs": aggs}
        answers = await self._in_one_pit(index, [body, counts])
        if answers is None:
            return await self.es.search(
                index=index,
                body={**body, "aggs": aggs},
                allow_partial_search_results=False,
                request_cache=self._cache,
            )
        return {**answers[0], "aggregations": answers[1].get("aggregations", {})}

    async def unready(self) -> str | None:
        """Why queries cannot be answered now (None: they can). The artifact and collection
        aliases must exist and point at indices this release's schema made: an older one
        lacks fields the queries read (e.g. `key_tri`), so its answers would be wrong,
        not slow, until `replay` rebuilds it."""
        aliases = [self.names.artifacts, self.names.collections]
        try:
            found = await self.es.indices.get_mapping(
                index=aliases, filter_path=["*.mappings._meta", "*.mappings.dynamic"]
            )
        except NotFoundError:  # either alias missing
            return "Elasticsearch answers, but the artifact indices do not exist."
        except _ES_ERRORS:
            return "Elasticsearch or the artifact index is not reachable."
        old = outdated_indices(found.body)
        if old:
            return (
                f"{', '.join(old)} {'was' if len(old) == 1 else 'were'} made by an older "
                f"release than schema version {SCHEMA_VERSION}: run `replay` to rebuild."
            )
        return None

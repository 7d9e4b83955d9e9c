"""Deep pages: ``offset`` far past ``max_result_window`` walks search_after under a PIT.

25,000 artifact documents are written directly (bulk) into a two-shard index: few
distinct ``created``/``updated`` values (large tie groups), 30 % null keys and
keys whose UTF-8 byte order matters. The expected order is computed here, in
Python, from Prefect's rules (one sort column, PostgreSQL's NULL placement,
UUIDs and keys in byte order) plus the service's documented tie-breaker, ``id``
descending (``query.sort``). Every page must be exactly its slice of that order:
deep pages with a small configured window (walk of many PIT pages), deep pages
with Elasticsearch's default 10,000 window and with the service's default (one
from/size search up to 50,000), consecutive pages across the from/size -> walk
boundary (no overlap, no gap), ``limit`` 0 and offsets past the end.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk
from prometheus_client import REGISTRY

from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings
from services.contract import ArtifactData
from services.documents import artifact_own_fields
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames

COUNT = 25_000
SMALL_WINDOW = 1_000
ES_DEFAULT_WINDOW = 10_000
SORTS = ("ID_DESC", "CREATED_DESC", "UPDATED_DESC", "KEY_DESC", "KEY_ASC")
KEYS = ("a", "a-b", "a_b", "B", "b", "z", "é", "ü", "\ue000", "😀", "key with space", "Z-9")
BASE = datetime(2024, 1, 1, tzinfo=UTC)

LATENCIES: dict[str, float] = {}


def _artifacts(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(COUNT):
        created = BASE + timedelta(seconds=rng.randrange(400))  # ~62 artifacts per value
        updated = created + timedelta(microseconds=rng.choice((0, 0, 0, 1, 500_000)))
        key = None if rng.random() < 0.3 else rng.choice(KEYS) + rng.choice(("", "", "-1", "x"))
        data = ArtifactData(
            id=uuid.UUID(int=rng.getrandbits(128), version=4),
            created=created,
            updated=updated,
            key=key,
            type=rng.choice(("markdown", "table", None)),
            data=rng.randrange(100),
        )
        out.append(artifact_own_fields(data, version=1))
    return out


def _id_bytes(doc: dict[str, Any]) -> bytes:
    return uuid.UUID(doc["id"]).bytes


def expected_order(docs: list[dict[str, Any]], sort: str) -> list[str]:
    """Prefect's order for ``sort`` with ties broken by ``id`` descending (byte order)."""
    by_id_desc = sorted(docs, key=_id_bytes, reverse=True)  # stable sorts refine this
    if sort == "ID_DESC":
        ordered = by_id_desc
    elif sort == "CREATED_DESC":
        ordered = sorted(by_id_desc, key=lambda d: d["created_us"], reverse=True)
    elif sort == "UPDATED_DESC":
        ordered = sorted(by_id_desc, key=lambda d: d["updated_us"], reverse=True)
    elif sort == "KEY_DESC":  # NULLs first under DESC
        nulls = [d for d in by_id_desc if d["key"] is None]
        keyed = [d for d in by_id_desc if d["key"] is not None]
        ordered = nulls + sorted(keyed, key=lambda d: d["key"].encode(), reverse=True)
    elif sort == "KEY_ASC":  # NULLs last under ASC
        nulls = [d for d in by_id_desc if d["key"] is None]
        keyed = [d for d in by_id_desc if d["key"] is not None]
        ordered = sorted(keyed, key=lambda d: d["key"].encode()) + nulls
    else:  # pragma: no cover
        raise AssertionError(sort)
    return [d["id"] for d in ordered]


@pytest.fixture(scope="module")
async def deep(elasticsearch_url: str) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    docs = _artifacts(2024)
    names = IndexNames(f"deep-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url, request_timeout=120)
    await ensure_indices(es, names, shards=2)
    try:
        actions = ({"_index": names.artifacts, "_id": d["id"], "_source": d} for d in docs)
        ok, errors = await async_bulk(es, actions, chunk_size=5_000, raise_on_error=True)
        assert ok == COUNT and not errors
        await es.indices.refresh(index=names.artifacts)
        yield docs, names.prefix
    finally:
        await drop_indices(es, names)
        await es.close()
        if LATENCIES:
            print("\ndeep page latencies (s):", {k: round(v, 3) for k, v in LATENCIES.items()})


def _client(elasticsearch_url: str, prefix: str, window: int, **settings: Any) -> httpx.AsyncClient:
    app = create_app(
        QuerySettings(max_result_window=window, **settings),
        ElasticsearchSettings(url=elasticsearch_url, index_prefix=prefix),
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc/api", timeout=120
    )


async def _page(client: httpx.AsyncClient, body: dict[str, Any], label: str = "") -> list[str]:
    started = time.perf_counter()
    resp = await client.post("/artifacts/filter", json=body)
    if label:
        LATENCIES[label] = time.perf_counter() - started
    assert resp.status_code == 200, resp.text[:300]
    return [row["id"] for row in resp.json()]


@pytest.mark.parametrize("sort", SORTS)
async def test_deep_offsets_with_a_small_window(
    deep: tuple[list[dict[str, Any]], str], elasticsearch_url: str, sort: str
) -> None:
    docs, prefix = deep
    want = expected_order(docs, sort)
    async with _client(elasticsearch_url, prefix, SMALL_WINDOW) as client:
        for offset in (20_000, 24_900, 999, 1_000, 1_001):
            body = {"sort": sort, "offset": offset, "limit": 200}
            label = f"window {SMALL_WINDOW} offset {offset} {sort}" if offset == 20_000 else ""
            assert await _page(client, body, label) == want[offset : offset + 200], offset


@pytest.mark.parametrize("sort", SORTS)
async def test_deep_offsets_with_elasticsearchs_default_window(
    deep: tuple[list[dict[str, Any]], str], elasticsearch_url: str, sort: str
) -> None:
    docs, prefix = deep
    want = expected_order(docs, sort)
    async with _client(elasticsearch_url, prefix, ES_DEFAULT_WINDOW) as client:
        for offset in (12_000, 9_800, 9_900, 9_950, 24_999):
            body = {"sort": sort, "offset": offset, "limit": 200}
            label = f"window {ES_DEFAULT_WINDOW} offset {offset} {sort}" if offset == 12_000 else ""
            assert await _page(client, body, label) == want[offset : offset + 200], offset


@pytest.mark.parametrize("sort", ["KEY_ASC", "CREATED_DESC"])
async def test_deep_offsets_with_the_default_window(
    deep: tuple[list[dict[str, Any]], str], elasticsearch_url: str, sort: str
) -> None:
    docs, prefix = deep
    want = expected_order(docs, sort)
    window = QuerySettings().max_result_window
    assert window > COUNT  # every offset of this index is one from/size search
    async with _client(elasticsearch_url, prefix, window) as client:
        for offset in (12_000, 24_800, 24_999):
            body = {"sort": sort, "offset": offset, "limit": 200}
            label = f"window {window} offset {offset} {sort}" if offset == 12_000 else ""
            assert await _page(client, body, label) == want[offset : offset + 200], offset


@pytest.mark.parametrize(
    ("window", "start"), [(SMALL_WINDOW, 400), (ES_DEFAULT_WINDOW, 9_400), (SMALL_WINDOW, 19_600)]
)
@pytest.mark.parametrize("sort", ["CREATED_DESC", "KEY_DESC", "KEY_ASC"])
async def test_consecutive_pages_cross_the_boundary_without_overlap_or_gap(
    deep: tuple[list[dict[str, Any]], str],
    elasticsearch_url: str,
    window: int,
    start: int,
    sort: str,
) -> None:
    docs, prefix = deep
    want = expected_order(docs, sort)
    seen: list[str] = []
    async with _client(elasticsearch_url, prefix, window) as client:
        for offset in range(start, start + 1_200, 150):  # pages straddle offset+limit = window
            seen += await _page(client, {"sort": sort, "offset": offset, "limit": 150})
    assert len(seen) == len(set(seen)) == 1_200
    assert seen == want[start : start + 1_200]


async def test_deep_pages_under_a_filter(
    deep: tuple[list[dict[str, Any]], str], elasticsearch_url: str
) -> None:
    docs, prefix = deep
    keyed = [d for d in docs if d["key"] is not None and d["type"] == "table"]
    filt: dict[str, Any] = {"key": {"exists_": True}, "type": {"any_": ["table"]}}
    want = expected_order(keyed, "KEY_ASC")
    assert len(want) > 3_000
    async with _client(elasticsearch_url, prefix, SMALL_WINDOW) as client:
        for offset in (2_500, len(want) - 50):
            body = {"artifacts": filt, "sort": "KEY_ASC", "offset": offset, "limit": 200}
            assert await _page(client, body) == want[offset : offset + 200]
        count = await client.post("/artifacts/count", json={"artifacts": filt})
        assert count.json() == len(want)


@pytest.mark.parametrize("window", [SMALL_WINDOW, ES_DEFAULT_WINDOW])
async def test_limit_zero_and_offsets_past_the_end(
    deep: tuple[list[dict[str, Any]], str], elasticsearch_url: str, window: int
) -> None:
    docs, prefix = deep
    want: Callable[[str], list[str]] = lambda sort: expected_order(docs, sort)  # noqa: E731
    async with _client(elasticsearch_url, prefix, window) as client:
        assert await _page(client, {"limit": 0}) == []
        assert await _page(client, {"limit": 0, "offset": 20_000}) == []
        assert await _page(client, {"offset": COUNT}) == []
        assert await _page(client, {"offset": COUNT + 1, "sort": "KEY_ASC"}) == []
        assert (
            await _page(client, {"offset": COUNT - 7, "sort": "KEY_DESC"}) == want("KEY_DESC")[-7:]
        )
        started = time.perf_counter()
        assert await _page(client, {"offset": 2**62, "limit": 200}) == []
        LATENCIES[f"window {window} offset 2**62"] = time.perf_counter() - started


@contextlib.asynccontextmanager
async def _loaded(
    elasticsearch_url: str, label: str, docs: dict[str, dict[str, Any]]
) -> AsyncIterator[tuple[AsyncElasticsearch, IndexNames]]:
    """A two-shard artifact index of its own holding `docs`, refreshed; dropped after."""
    names = IndexNames(f"{label}-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url, request_timeout=120)
    await ensure_indices(es, names, shards=2)
    try:
        actions = ({"_index": names.artifacts, "_id": i, "_source": d} for i, d in docs.items())
        await async_bulk(es, actions, chunk_size=5_000, raise_on_error=True)
        await es.indices.refresh(index=names.artifacts)
        yield es, names
    finally:
        await drop_indices(es, names)
        await es.close()


def _continuations(outcome: str) -> float:
    value = REGISTRY.get_sample_value("query_page_continuations_total", {"outcome": outcome})
    return value or 0.0


@pytest.mark.parametrize("sort", SORTS)
async def test_sequential_pages_continue_and_stay_exact_under_writes(
    elasticsearch_url: str, sort: str
) -> None:
    """Pages 0, 150, 300, ... continue from the previous page's last hit (query/resume.py).

    Between pages, documents are added that sort before the boundary, deleted before
    it, or added after it. Every page must still be exactly its slice of the order of
    the documents present when it was asked: a continuation whose boundary moved is
    detected (and counted) and the page is searched from the start.
    """
    rng = random.Random(sort)
    docs = {d["id"]: d for d in _artifacts(7)[:3_000]}
    continued, moved = _continuations("continued"), _continuations("moved")
    async with _loaded(elasticsearch_url, "seq", docs) as (es, names):
        extra = iter(_artifacts(8))
        async with _client(elasticsearch_url, names.prefix, ES_DEFAULT_WINDOW) as client:
            for page in range(20):
                offset = page * 150
                want = expected_order(list(docs.values()), sort)[offset : offset + 150]
                assert await _page(client, {"sort": sort, "offset": offset, "limit": 150}) == want
                if page == 19:
                    break
                order = expected_order(list(docs.values()), sort)
                change = page % 4
                if change == 1:  # a new document before the next page's boundary
                    new = next(extra)
                    while expected_order([*docs.values(), new], sort).index(new["id"]) >= offset:
                        new = next(extra)
                    docs[new["id"]] = new
                    await es.index(index=names.artifacts, id=new["id"], document=new)
                elif change == 2:  # a document before the boundary deleted
                    gone = order[rng.randrange(offset + 150)]
                    del docs[gone]
                    await es.delete(index=names.artifacts, id=gone)
                elif change == 3:  # a new document after it: the continuation still holds
                    new = next(extra)
                    while expected_order([*docs.values(), new], sort).index(new["id"]) < (
                        offset + 150
                    ):
                        new = next(extra)
                    docs[new["id"]] = new
                    await es.index(index=names.artifacts, id=new["id"], document=new)
                await es.indices.refresh(index=names.artifacts)
    # changes 1 and 2 move the boundary (5 + 5 pages), 0 and 3 keep it (4 + 5 continued)
    assert _continuations("moved") - moved == 10
    assert _continuations("continued") - continued == 9


def _bounds(outcome: str) -> float:
    value = REGISTRY.get_sample_value("query_page_bounds_total", {"outcome": outcome})
    return value or 0.0


@pytest.mark.parametrize("sort", ["KEY_ASC", "KEY_DESC"])
async def test_pages_asked_again_are_bounded_by_their_end_and_stay_exact_under_writes(
    elasticsearch_url: str, sort: str
) -> None:
    """The same pages asked again and again, as a UI polling its page does: a page by
    `key` is then searched only up to its remembered end (query/resume.py). Between
    rounds, documents are added inside a page (the prefix holds more than the page),
    deleted inside it (the prefix holds fewer: searched again without the bound), added
    or deleted before it. Every answer must be exactly its slice of the order of the
    documents present when it was asked."""
    rng = random.Random(sort + "again")
    docs = {d["id"]: d for d in _artifacts(11)[:2_000]}
    bounded, short = _bounds("bounded"), _bounds("short")
    offsets = (0, 100, 1_300)
    async with _loaded(elasticsearch_url, "again", docs) as (es, names):
        extra = iter(_artifacts(12))
        async with _client(elasticsearch_url, names.prefix, ES_DEFAULT_WINDOW) as client:
            for round_ in range(12):
                for offset in offsets:
                    want = expected_order(list(docs.values()), sort)[offset : offset + 50]
                    body = {"sort": sort, "offset": offset, "limit": 50}
                    assert await _page(client, body) == want, (round_, offset)
                order = expected_order(list(docs.values()), sort)
                offset = offsets[round_ % len(offsets)]
                change = round_ % 4
                if change in (0, 2):  # a new document inside (0) or before (2) that page
                    low, high = (offset, offset + 50) if change == 0 else (0, offset)
                    new = next(extra)
                    while (
                        not low
                        <= expected_order([*docs.values(), new], sort).index(new["id"])
                        < max(high, 1)
                    ):
                        new = next(extra)
                    docs[new["id"]] = new
                    await es.index(index=names.artifacts, id=new["id"], document=new)
                else:  # a document inside (1) or before (3) that page deleted
                    low, high = (offset, offset + 50) if change == 1 else (0, max(offset, 1))
                    gone = order[rng.randrange(low, high)]
                    del docs[gone]
                    await es.delete(index=names.artifacts, id=gone)
                await es.indices.refresh(index=names.artifacts)
    # every page after the first round had its end remembered; deletions inside a page
    # cut its prefix short at least once
    assert _bounds("bounded") - bounded >= 20
    assert _bounds("short") - short >= 1


async def _request_cache(es: AsyncElasticsearch, index: str) -> tuple[int, int]:
    """Elasticsearch's shard request cache counters of `index`: (hits, misses)."""
    stats = await es.indices.stats(index=index, metric="request_cache")
    cache = stats["_all"]["total"]["request_cache"]
    return int(cache["hit_count"]), int(cache["miss_count"])


@pytest.mark.parametrize("request_cache", [True, False])
async def test_pages_asked_again_come_from_the_request_cache_until_a_refresh_changes_them(
    elasticsearch_url: str, request_cache: bool
) -> None:
    """Pages with hits are answered from Elasticsearch's shard request cache when asked
    again (QUERY_REQUEST_CACHE, on by default; Elasticsearch alone caches only searches
    without hits), and a refresh that changed documents empties it: after a write the
    same request answers the new order, never a cached one."""
    docs = {d["id"]: d for d in _artifacts(21)[:2_000]}
    bodies = [
        {"sort": "KEY_ASC", "offset": 1_000, "limit": 50},
        {"sort": "CREATED_DESC", "offset": 0, "limit": 50},
        {"sort": "ID_DESC", "offset": 300, "limit": 50},
    ]
    async with _loaded(elasticsearch_url, "cache", docs) as (es, names):
        extra = iter(_artifacts(22))
        settings = {"request_cache": request_cache, "page_boundaries": 0}
        async with _client(
            elasticsearch_url, names.prefix, ES_DEFAULT_WINDOW, **settings
        ) as client:
            for round_ in range(3):
                before = await _request_cache(es, names.artifacts)
                for body in bodies:
                    want = expected_order(list(docs.values()), body["sort"])
                    start = body["offset"]
                    for _ in range(3):
                        got = await _page(client, body)
                        assert got == want[start : start + 50], (round_, body)
                hits, misses = await _request_cache(es, names.artifacts)
                if request_cache:
                    # each body: searched once per shard, then answered from the cache
                    assert misses - before[1] >= len(bodies), round_
                    assert hits - before[0] >= 2 * len(bodies), round_
                else:
                    assert (hits, misses) == before, round_
                for _ in range(5):  # documents added: the next round's pages change
                    new = next(extra)
                    docs[new["id"]] = new
                    await es.index(index=names.artifacts, id=new["id"], document=new)
                gone = expected_order(list(docs.values()), "KEY_ASC")[1_010]
                del docs[gone]
                await es.delete(index=names.artifacts, id=gone)
                await es.indices.refresh(index=names.artifacts)

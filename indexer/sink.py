"""Elasticsearch adapter of the indexer: realtime gets, conditional bulk writes, searches.

Bulk failures are data: `bulk` returns one `ItemResult` per action. Whole-request
failures and retryable item failures (429, 5xx) raise `TransientError`, so the
caller retries the batch with backoff and never skips an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elasticsearch import AsyncElasticsearch, TransportError
from elasticsearch import ConnectionError as EsConnectionError

from indexer.metrics import BULK_SECONDS
from services.documents import format_micros
from services.errors import TransientError
from services.es.indices import IndexNames


@dataclass(frozen=True, slots=True)
class Got:
    """A realtime GET result: the source (None when missing) and its CAS handle."""

    source: dict[str, Any] | None
    seq_no: int | None
    primary_term: int | None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The outcome of one bulk action."""

    doc_id: str
    status: int
    seq_no: int | None
    primary_term: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        """Whether Elasticsearch accepted the action (a missing delete is fine too)."""
        return self.status < 300 or (self.status == 404 and self.error is None)


@dataclass(frozen=True, slots=True)
class Write:
    """One conditional write: index (CAS on seq_no/term, or create when both None) or delete."""

    index: str
    doc_id: str
    source: dict[str, Any] | None
    seq_no: int | None = None
    primary_term: int | None = None

    def action(self) -> list[dict[str, Any]]:
        """The bulk action line(s) of this write."""
        meta: dict[str, Any] = {"_index": self.index, "_id": self.doc_id}
        if self.seq_no is not None and self.primary_term is not None:
            meta["if_seq_no"] = self.seq_no
            meta["if_primary_term"] = self.primary_term
        if self.source is None:
            return [{"delete": meta}]
        op = "index" if "if_seq_no" in meta else "create"
        return [{op: meta}, self.source]


# Only what a result needs: a bulk response is otherwise several times larger.
BULK_FILTER_PATH = "items.*._id,items.*.status,items.*._seq_no,items.*._primary_term,items.*.error"


class Sink:
    """Thin async wrapper over the Elasticsearch client for the indexer."""

    def __init__(
        self, es: AsyncElasticsearch, names: IndexNames, chunk: int = 1000, concurrency: int = 2
    ) -> None:
        self.es = es
        self.names = names
        self.chunk = chunk
        self.concurrency = concurrency

    async def mget(self, index: str, ids: Sequence[str]) -> dict[str, Got]:
        """Realtime multi-get; ids absent from the index map to an empty `Got`."""
        found: dict[str, Got] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), self.chunk):
            part = unique[start : start + self.chunk]
            try:
                resp = await self.es.mget(index=index, ids=part, realtime=True)
            except (TransportError, EsConnectionError) as exc:
                raise TransientError(f"mget on {index} failed: {exc}") from exc
            for doc in resp["docs"]:
                if doc.get("found"):
                    found[doc["_id"]] = Got(doc["_source"], doc["_seq_no"], doc["_primary_term"])
                elif "error" in doc:
                    raise TransientError(f"mget on {index}: {doc['error']}")
                else:
                    found[doc["_id"]] = Got(None, None, None)
        return found

    async def mget_versions(self, index: str, ids: Sequence[str]) -> dict[str, int | None]:
        """Realtime `_seq_no` of each id (None when missing), without sources."""
        out: dict[str, int | None] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), self.chunk * 5):
            part = unique[start : start + self.chunk * 5]
            try:
                resp = await self.es.mget(index=index, ids=part, realtime=True, source=False)
            except (TransportError, EsConnectionError) as exc:
                raise TransientError(f"mget on {index} failed: {exc}") from exc
            for doc in resp["docs"]:
                if "error" in doc:
                    raise TransientError(f"mget on {index}: {doc['error']}")
                out[doc["_id"]] = doc["_seq_no"] if doc.get("found") else None
        return out

    async def bulk(self, writes: Sequence[Write]) -> list[ItemResult]:
        """Run the writes in chunks, at most `concurrency` requests at a time.

        Results keep the order of `writes`. Raises `TransientError` on retryable
        failures (the whole batch is then re-run; every write is idempotent).
        """
        chunks = [writes[i : i + self.chunk] for i in range(0, len(writes), self.chunk)]
        gate = asyncio.Semaphore(self.concurrency)

        async def run(part: Sequence[Write]) -> list[ItemResult]:
            async with gate:
                return await self._bulk_chunk(part)

        done = await asyncio.gather(*(run(part) for part in chunks))
        return [result for part in done for result in part]

    async def _bulk_chunk(self, part: Sequence[Write]) -> list[ItemResult]:
        body: list[dict[str, Any]] = []
        for write in part:
            body.extend(write.action())
        try:
            with BULK_SECONDS.time():
                resp = await self.es.bulk(
                    operations=body, refresh=False, filter_path=BULK_FILTER_PATH
                )
        except (TransportError, EsConnectionError) as exc:
            raise TransientError(f"bulk failed: {exc}") from exc
        results: list[ItemResult] = []
        for item in resp["items"]:
            ((_, info),) = item.items()
            status = int(info.get("status", 500))
            error = info.get("error")
            if status == 429 or status >= 500:
                raise TransientError(f"bulk item {info.get('_id')}: {status} {error}")
            results.append(
                ItemResult(
                    info["_id"],
                    status,
                    info.get("_seq_no"),
                    info.get("_primary_term"),
                    None if error is None else str(error)[:500],
                )
            )
        return results

    async def refresh(self, *indices: str) -> None:
        """Make every acknowledged write to `indices` visible to search."""
        try:
            await self.es.indices.refresh(index=",".join(indices))
        except (TransportError, EsConnectionError) as exc:
            raise TransientError(f"refresh failed: {exc}") from exc

    async def search_all(self, index: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Every hit of `query` (source, seq_no, term), walked with search_after on `_id`."""
        hits: list[dict[str, Any]] = []
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "query": query,
                "size": 5000,
                "sort": [{"id": "asc"}],
                "seq_no_primary_term": True,
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            try:
                resp = await self.es.search(index=index, body=body)
            except (TransportError, EsConnectionError) as exc:
                raise TransientError(f"search on {index} failed: {exc}") from exc
            page = resp["hits"]["hits"]
            hits.extend(page)
            if len(page) < 5000:
                return hits
            after = page[-1]["sort"]

    async def latest_by_key(
        self, keys: Sequence[str]
    ) -> dict[str, tuple[dict[str, Any], int, str]]:
        """Per key: the live artifact with the greatest (created, id), and the min created.

        Returns key -> (latest source, min created_us, min created string).
        """
        out: dict[str, tuple[dict[str, Any], int, str]] = {}
        unique = sorted(set(keys))
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            body: dict[str, Any] = {
                "size": len(part),
                "query": {"bool": {"filter": [{"terms": {"key": part}}, {"term": {"live": True}}]}},
                "sort": [{"created_us": "desc"}, {"id": "desc"}],
                "collapse": {"field": "key"},
                "_source": {"excludes": ["fr", "flow", "dep", "tr"]},
                "aggs": {
                    "by_key": {
                        "terms": {"field": "key", "size": len(part)},
                        "aggs": {"earliest": {"min": {"field": "created_us"}}},
                    }
                },
                "track_total_hits": False,
            }
            try:
                resp = await self.es.search(index=self.names.artifacts, body=body)
            except (TransportError, EsConnectionError) as exc:
                raise TransientError(f"collection search failed: {exc}") from exc
            earliest = {
                bucket["key"]: int(bucket["earliest"]["value"])
                for bucket in resp["aggregations"]["by_key"]["buckets"]
            }
            for hit in resp["hits"]["hits"]:
                latest = hit["_source"]
                first = earliest[latest["key"]]
                out[latest["key"]] = (latest, first, format_micros(first))
        return out

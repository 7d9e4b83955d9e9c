"""Elasticsearch adapter of the alerts worker: which saved searches match what changed.

`wait_visible` makes the versions the change feed announced searchable (a forced refresh
when a search does not see them yet; see alerts/worker.py, step 2); `evaluate` runs every
saved search restricted to the changed ids, many saved searches per search as named
clauses (`combined_body`), in one `_msearch` (artifacts-mode searches over changed
artifacts, latest_per_key searches over changed collections, whose latest artifact's
version is then read from the artifact index); `scan`
walks what already matches a saved search (`notify_existing`). Every search carries the
same `preference`, so it reads the shard copies the visibility check read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from elasticsearch import AsyncElasticsearch

from alerts import metrics
from alerts.model import (
    Match,
    SavedSearch,
    combined_body,
    evaluation_body,
    evaluation_query,
    latest_ids,
    not_visible,
    read_matches,
    source_fields,
    split_combined,
    visibility_body,
)
from services.errors import TransientError, TranslationError

log = logging.getLogger("alerts.evaluator")

PREFERENCE = "prefect-artifact-alerts"
"""Every search of the worker reads the same shard copies."""

FORCED_REFRESH_INTERVAL_S = 0.5
"""Forced refreshes are at least this far apart: each costs the indexer (a refresh every
0.25 s cut its backlog throughput by about a third on the benchmark machine; ADR 0008,
"Latency"), and a change waits at most this long for one."""

IDS_PER_SEARCH = 1_000
SEARCHES_PER_MSEARCH = 100
SCAN_PAGE = 500
SCAN_KEEP_ALIVE = "2m"


class EvaluationError(TransientError):
    """Elasticsearch could not evaluate a batch now (retried)."""


class Evaluator:
    """Changed artifact and collection ids in, matches of every saved search out
    (Elasticsearch adapter)."""

    def __init__(
        self,
        es: AsyncElasticsearch,
        artifacts: str,
        collections: str,
        visibility_wait_s: float,
        forced_refresh_interval_s: float = FORCED_REFRESH_INTERVAL_S,
    ) -> None:
        self.es = es
        self.artifacts = artifacts
        self.collections = collections
        self.visibility_wait_s = visibility_wait_s
        self.forced_refresh_interval_s = forced_refresh_interval_s
        self._forced_at = -float("inf")

    async def wait_visible(self, changed: dict[str, dict[str, int]]) -> None:
        """Return once searches see at least these versions ({index: {id: version}}), or
        after one forced refresh of the indices where some are not searchable yet.

        The change feed announces only writes Elasticsearch acknowledged, and a refresh makes
        every acknowledged write searchable: after it, nothing announced is still hidden
        (versions still missing were superseded by an index rebuilt meanwhile: a replay).
        With `visibility_wait_s` > 0 the periodic refresh is awaited that long first; and
        forced refreshes are `forced_refresh_interval_s` apart at least (meanwhile the
        periodic refresh may do: polled)."""
        deadline = max(
            time.monotonic() + self.visibility_wait_s,
            self._forced_at + self.forced_refresh_interval_s,
        )
        delay = 0.05
        pending = {index: docs for index, docs in changed.items() if docs}
        while pending:
            checks = await asyncio.gather(
                *(self._not_visible(index, docs) for index, docs in pending.items())
            )
            pending = {
                index: docs
                for (index, docs), missing in zip(pending.items(), checks, strict=True)
                if missing
            }
            if not pending:
                return
            if time.monotonic() >= deadline:
                metrics.FORCED_REFRESHES.inc()
                self._forced_at = time.monotonic()
                await self.es.indices.refresh(index=",".join(sorted(pending)))
                return
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, 0.5)

    async def _not_visible(self, index: str, changed: dict[str, int]) -> set[str]:
        """The ids of `changed` whose searchable version in `index` is older."""
        ids = list(changed)
        missing: set[str] = set()
        for i in range(0, len(ids), IDS_PER_SEARCH):
            chunk = ids[i : i + IDS_PER_SEARCH]
            resp = await self.es.search(
                index=index, body=visibility_body(chunk), preference=PREFERENCE
            )
            missing |= not_visible({k: changed[k] for k in chunk}, resp.body)
        return missing

    async def evaluate(
        self,
        searches: Sequence[SavedSearch],
        ids: Sequence[str],
        collection_ids: Sequence[str] = (),
    ) -> list[Match]:
        """Every (saved search, artifact) match among the changed artifacts `ids` (searches
        in artifacts mode) and the changed collections `collection_ids` (latest_per_key)."""
        by_artifact = [s for s in searches if not s.search.latest_per_key]
        by_collection = [s for s in searches if s.search.latest_per_key]
        answers, latest = await self._run(
            [(by_artifact, ids, self.artifacts), (by_collection, collection_ids, self.collections)]
        )
        matches = [m for search, answer in answers for m in read_matches(search, answer)]
        if latest:
            versions = await self.artifact_versions(
                sorted({i for search, answer in latest for i in latest_ids(search, answer)})
            )
            for search, answer in latest:
                matches.extend(read_matches(search, answer, versions))
        return matches

    async def evaluate_page(self, search: SavedSearch, resp: dict[str, Any]) -> list[Match]:
        """The matches of one page of a scan of existing documents (`notify_existing`)."""
        ids = latest_ids(search, resp)
        versions = await self.artifact_versions(ids) if ids else None
        return read_matches(search, resp, versions)

    async def scan(self, search: SavedSearch, max_matches: int) -> AsyncIterator[list[Match]]:
        """The documents that match `search` now, newest first, a page at a time, at most
        `max_matches` (a point in time: stable while the scan runs)."""
        index = self.collections if search.search.latest_per_key else self.artifacts
        opened = await self.es.open_point_in_time(index=index, keep_alive=SCAN_KEEP_ALIVE)
        pit_id = str(opened["id"])
        seen = 0
        after: list[Any] | None = None
        try:
            while seen < max_matches:
                body: dict[str, Any] = {
                    "query": evaluation_query(search),
                    "size": min(SCAN_PAGE, max_matches - seen),
                    "sort": [{"created_us": {"order": "desc"}}, {"_shard_doc": "desc"}],
                    "version": True,
                    "_source": {"includes": source_fields(search)},
                    "track_total_hits": False,
                    "pit": {"id": pit_id, "keep_alive": SCAN_KEEP_ALIVE},
                }
                if after is not None:
                    body["search_after"] = after
                resp = (await self.es.search(body=body)).body
                pit_id = str(resp.get("pit_id", pit_id))
                hits = resp["hits"]["hits"]
                if not hits:
                    return
                seen += len(hits)
                after = hits[-1]["sort"]
                yield await self.evaluate_page(search, resp)
        finally:
            await self.es.close_point_in_time(id=pit_id)

    async def artifact_versions(self, ids: Sequence[str]) -> dict[str, int]:
        """The searchable event version of each artifact (absent: not found)."""
        out: dict[str, int] = {}
        for i in range(0, len(ids), IDS_PER_SEARCH):
            chunk = list(ids[i : i + IDS_PER_SEARCH])
            resp = await self.es.search(
                index=self.artifacts,
                query={"ids": {"values": chunk}},
                size=len(chunk),
                source_includes=["version"],
                track_total_hits=False,
                preference=PREFERENCE,
            )
            for hit in resp["hits"]["hits"]:
                out[hit["_id"]] = int(hit["_source"].get("version", 0))
        return out

    async def _run(
        self, targets: Sequence[tuple[Sequence[SavedSearch], Sequence[str], str]]
    ) -> list[list[tuple[SavedSearch, dict[str, Any]]]]:
        """For each (saved searches, ids, index) of `targets`, every search ANDed with its
        ids: one combined search per chunk of ids and group of saved searches
        (`combined_body`), all targets in one `_msearch` (one round trip); a group
        Elasticsearch refuses (a saved search's query it cannot run) is evaluated search by
        search, so only that saved search is logged and counted, not retried. The answers
        of each target, in order."""
        requests: list[tuple[int, list[SavedSearch], Sequence[str], str]] = []
        for n, (searches, ids, index) in enumerate(targets):
            runnable: list[SavedSearch] = []
            for search in searches:
                try:
                    evaluation_query(search)
                except TranslationError as exc:  # stored by a release that allowed it
                    metrics.SEARCH_ERRORS.inc()
                    log.error("saved search %s cannot be translated: %s", search.id, exc)
                    continue
                runnable.append(search)
            requests += [
                (n, runnable[j : j + SEARCHES_PER_MSEARCH], ids[i : i + IDS_PER_SEARCH], index)
                for i in range(0, len(ids), IDS_PER_SEARCH)
                for j in range(0, len(runnable), SEARCHES_PER_MSEARCH)
            ]
        out: list[list[tuple[SavedSearch, dict[str, Any]]]] = [[] for _ in targets]
        if not requests:
            return out
        body: list[dict[str, Any]] = []
        for _, group, chunk, index in requests:
            body += [{"index": index, "preference": PREFERENCE}, combined_body(group, chunk)]
        resp = await self.es.msearch(searches=body)
        for (n, group, chunk, index), answer in zip(requests, resp["responses"], strict=True):
            if "error" not in answer:
                out[n] += split_combined(group, answer)
            elif int(answer.get("status", 500)) == 400:  # one saved search's query?
                out[n] += await self._run_each(group, chunk, index)
            else:
                raise EvaluationError(f"evaluation failed (HTTP {answer.get('status')})")
        return out

    async def _run_each(
        self, searches: Sequence[SavedSearch], ids: Sequence[str], index: str
    ) -> list[tuple[SavedSearch, dict[str, Any]]]:
        """Each search ANDed with `ids`, one search each in one `_msearch`; the answers of
        those that ran (a search Elasticsearch refuses is logged and counted)."""
        body: list[dict[str, Any]] = []
        for search in searches:
            body += [{"index": index, "preference": PREFERENCE}, evaluation_body(search, ids)]
        resp = await self.es.msearch(searches=body)
        out: list[tuple[SavedSearch, dict[str, Any]]] = []
        for search, answer in zip(searches, resp["responses"], strict=True):
            if "error" in answer:
                status = int(answer.get("status", 500))
                if status == 400:  # this search's query, not the cluster
                    metrics.SEARCH_ERRORS.inc()
                    log.error(
                        "saved search %s could not be evaluated: %s", search.id, answer["error"]
                    )
                    continue
                raise EvaluationError(f"evaluation failed (HTTP {status})")
            out.append((search, answer))
        return out

"""Apply one consumed batch to Elasticsearch so that the index converges.

The steps, and why no update can be lost, are in docs/propagation.md. In short:

1. read the stored state of every entity in the batch (realtime GET) and fold the
   batch's events onto it (`projection.reduce_events`);
2. add relation candidates, then write changed snapshots (compare-and-set);
3. write the batch's artifacts with references resolved from snapshots;
4. if a parent entity changed or a collection must be rebuilt: refresh, search
   the documents whose references depend on a changed entity, re-resolve and
   write them (compare-and-set);
5. collections: fold new artifacts into the stored collection (compare-and-set,
   no search); rebuild from a search, verified after a refresh, the keys an
   artifact left, was deleted from or moved within (`projection.collection_changes`);
6. re-resolve every document written above and rewrite any whose references
   changed meanwhile (closes the read-then-write race with concurrent writers).

Every step is idempotent, so a batch that fails half-way is simply run again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from indexer.projection import (
    Affected,
    Outcome,
    affected_by,
    artifact_document_own,
    collection_changes,
    merge_collection,
    reduce_events,
    relation_adds,
    snapshot_document,
    stored_from_artifact,
    stored_from_snapshot,
)
from indexer.sink import Got, ItemResult, Sink, Write
from services.contract import Event
from services.documents import (
    NeedDocs,
    collection_id,
    collection_own_fields,
    refs_of,
    resolve_refs,
    snapshot_id,
    strip_refs,
    with_refs,
)
from services.errors import TransientError

log = logging.getLogger("indexer.engine")

MAX_ROUNDS = 8


class SnapshotCache(dict[str, dict[str, Any] | None]):
    """Snapshot sources read during one batch, with the `_seq_no` each was read at."""

    def __init__(self) -> None:
        super().__init__()
        self.seq_nos: dict[str, int | None] = {}


class ConflictError(TransientError):
    """A compare-and-set write lost a race; the batch is re-run."""


@dataclass
class BatchStats:
    """What one batch did, for metrics and logs."""

    events: int = 0
    applied: int = 0
    stale: int = 0
    artifacts_written: int = 0
    propagated: int = 0
    collections_written: int = 0
    rewrites: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Written:
    """A document written with resolved references, to be verified afterwards."""

    index: str
    doc_id: str
    source: dict[str, Any]
    seq_no: int | None
    primary_term: int | None

    @classmethod
    def acknowledged(cls, write: Write, result: ItemResult) -> _Written:
        """The document of a successful write, at the version Elasticsearch gave it."""
        return cls(
            write.index, write.doc_id, write.source or {}, result.seq_no, result.primary_term
        )


class Engine:
    """Applies batches of parsed events; stateless between batches."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.names = sink.names

    async def apply(self, events: Sequence[Event]) -> BatchStats:
        """Apply `events` (in consumption order). Raises `TransientError` to be retried."""
        stats = BatchStats(events=len(events))
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            stats.seconds[name] = stats.seconds.get(name, 0.0) + now - clock
            clock = now

        grouped: dict[tuple[str, str], list[Event]] = defaultdict(list)
        for event in events:
            grouped[(event.entity, event.entity_id)].append(event)
        outcomes = await self._fold(grouped)
        for outcome in outcomes:
            stats.applied += outcome.applied
            stats.stale += outcome.stale
        lap("fold")

        await self._write_relations(outcomes)
        await self._write_snapshots(outcomes)
        lap("snapshots")

        cache = SnapshotCache()
        written: list[_Written] = []
        written += await self._write_artifacts(outcomes, cache)
        stats.artifacts_written = len(written)
        lap("artifacts")

        affected = Affected()
        for outcome in outcomes:
            affected_by(outcome, affected)
        changes = collection_changes(outcomes)
        if affected.query() is not None or changes.recompute:
            # One refresh serves both the fan-out search and the first collection
            # aggregation: both must see every artifact acknowledged so far. A batch
            # of new artifacts only (the steady state) needs no refresh at all.
            await self.sink.refresh(self.names.artifacts, self.names.collections)
        propagated = await self._propagate(affected, cache)
        stats.propagated = len(propagated)
        written += propagated
        lap("propagate")

        collections = await self._collections(changes.recompute, cache)
        collections += await self._merge_collections(changes.merge, cache)
        stats.collections_written = len(collections)
        written += collections
        lap("collections")

        stats.rewrites = await self._verify(written, cache)
        lap("verify")
        return stats

    # -- 1. fold --------------------------------------------------------------------

    async def _fold(self, grouped: dict[tuple[str, str], list[Event]]) -> list[Outcome]:
        entity_ids = [snapshot_id(e, i) for (e, i) in grouped if e != "artifact"]
        artifact_ids = [i for (e, i) in grouped if e == "artifact"]
        snaps = await self.sink.mget(self.names.entities, entity_ids) if entity_ids else {}
        arts = await self.sink.mget(self.names.artifacts, artifact_ids) if artifact_ids else {}
        outcomes = []
        for (entity, entity_id), evs in grouped.items():
            if entity == "artifact":
                got = arts[entity_id]
                stored = stored_from_artifact(got.source, got.seq_no, got.primary_term)
            else:
                got = snaps[snapshot_id(entity, entity_id)]
                stored = stored_from_snapshot(got.source, got.seq_no, got.primary_term)
            outcomes.append(reduce_events(entity, entity_id, stored, evs))
        return outcomes

    # -- 2. relations and snapshots ------------------------------------------------------

    async def _write_relations(self, outcomes: Iterable[Outcome]) -> None:
        adds: dict[str, set[str]] = defaultdict(set)
        for outcome in outcomes:
            if outcome.effective:
                for rel_id, member in relation_adds(outcome):
                    adds[rel_id].add(member)
        for _ in range(MAX_ROUNDS):
            if not adds:
                return
            current = await self.sink.mget(self.names.entities, list(adds))
            writes = []
            for rel_id, members in adds.items():
                got = current[rel_id]
                have = set(got.source.get("members", [])) if got.source else set()
                if members <= have:
                    continue
                source = {"entity": "relation", "members": sorted(have | members)}
                writes.append(
                    Write(self.names.entities, rel_id, source, got.seq_no, got.primary_term)
                )
            results = await self.sink.bulk(writes)
            retry = {r.doc_id for r in results if r.status == 409}
            self._raise_for_errors(results, ignore={409})
            adds = {k: v for k, v in adds.items() if k in retry}
        raise ConflictError("relation candidates kept conflicting")

    async def _write_snapshots(self, outcomes: Iterable[Outcome]) -> None:
        writes = []
        for outcome in outcomes:
            if outcome.entity == "artifact" or not outcome.changed:
                continue
            before = outcome.before
            writes.append(
                Write(
                    self.names.entities,
                    snapshot_id(outcome.entity, outcome.entity_id),
                    snapshot_document(outcome),
                    None if before is None else before.seq_no,
                    None if before is None else before.primary_term,
                )
            )
        if writes:
            results = await self.sink.bulk(writes)
            if any(r.status == 409 for r in results):
                raise ConflictError("a snapshot changed while the batch was applied")
            self._raise_for_errors(results)

    # -- resolution -------------------------------------------------------------------

    async def _resolve(
        self,
        pairs: Sequence[tuple[str | None, str | None]],
        cache: dict[str, dict[str, Any] | None],
    ) -> list[dict[str, Any]]:
        """References for each (flow_run_id, task_run_id), fetching snapshots as needed."""
        for _ in range(MAX_ROUNDS):
            need: set[str] = set()
            out: list[dict[str, Any]] = []
            # Many artifacts share a flow run or a task run: resolve each side once
            # per round. Shared results are only ever read (serialized or compared).
            by_run: dict[str | None, dict[str, Any] | NeedDocs] = {}
            by_task: dict[str | None, dict[str, Any] | NeedDocs] = {}
            for fr, tr in pairs:
                run = by_run.get(fr)
                if run is None:
                    run = by_run[fr] = resolve_refs(fr, None, cache)
                task = by_task.get(tr)
                if task is None:
                    task = by_task[tr] = resolve_refs(None, tr, cache)
                if isinstance(run, NeedDocs):
                    need |= run.ids
                if isinstance(task, NeedDocs):
                    need |= task.ids
                if not isinstance(run, NeedDocs) and not isinstance(task, NeedDocs):
                    out.append({**run, "tr": task["tr"]})
            if not need:
                return out
            got = await self.sink.mget(self.names.entities, sorted(need))
            for doc_id, value in got.items():
                cache[doc_id] = value.source
                if isinstance(cache, SnapshotCache):
                    cache.seq_nos[doc_id] = value.seq_no
        raise TransientError("reference resolution did not converge")

    # -- 3. artifacts -------------------------------------------------------------------

    async def _write_artifacts(
        self, outcomes: Iterable[Outcome], cache: dict[str, dict[str, Any] | None]
    ) -> list[_Written]:
        chosen = [o for o in outcomes if o.entity == "artifact" and o.effective]
        if not chosen:
            return []
        owns = [artifact_document_own(o) for o in chosen]
        pairs = [
            (own.get("flow_run_id"), own.get("task_run_id")) if own["live"] else (None, None)
            for own in owns
        ]
        refs = await self._resolve(pairs, cache)
        writes = []
        for outcome, own, ref in zip(chosen, owns, refs, strict=True):
            before = outcome.before
            source = with_refs(own, ref) if own["live"] else own
            writes.append(
                Write(
                    self.names.artifacts,
                    outcome.entity_id,
                    source,
                    None if before is None else before.seq_no,
                    None if before is None else before.primary_term,
                )
            )
        results = await self.sink.bulk(writes)
        if any(r.status == 409 for r in results):
            raise ConflictError("an artifact changed while the batch was applied")
        self._raise_for_errors(results)
        return [
            _Written.acknowledged(w, r)
            for w, r in zip(writes, results, strict=True)
            if w.source and w.source.get("live")
        ]

    # -- 4. propagation -------------------------------------------------------------------

    async def _propagate(
        self, affected: Affected, cache: dict[str, dict[str, Any] | None]
    ) -> list[_Written]:
        """Re-resolve documents embedding a changed entity (the caller has refreshed)."""
        query = affected.query()
        if query is None:
            return []
        targets: list[tuple[str, dict[str, Any]]] = []
        for index in (self.names.artifacts, self.names.collections):
            for hit in await self.sink.search_all(index, query):
                if index == self.names.artifacts and not hit["_source"].get("live"):
                    continue
                targets.append((index, hit))
        docs = [
            _Written(index, hit["_id"], hit["_source"], hit["_seq_no"], hit["_primary_term"])
            for index, hit in targets
        ]
        return await self._rewrite_refs(docs, cache, only_if_changed=True)

    async def _rewrite_refs(
        self,
        docs: list[_Written],
        cache: dict[str, dict[str, Any] | None],
        only_if_changed: bool,
    ) -> list[_Written]:
        """Re-resolve each document's references and CAS-write those that differ."""
        done: list[_Written] = []
        for _ in range(MAX_ROUNDS):
            if not docs:
                return done
            pairs = [(d.source.get("flow_run_id"), d.source.get("task_run_id")) for d in docs]
            refs = await self._resolve(pairs, cache)
            writes: list[Write] = []
            pending: list[_Written] = []
            for doc, ref in zip(docs, refs, strict=True):
                if only_if_changed and refs_of(doc.source) == ref:
                    continue
                source = with_refs(strip_refs(doc.source), ref)
                writes.append(Write(doc.index, doc.doc_id, source, doc.seq_no, doc.primary_term))
                pending.append(doc)
            if not writes:
                return done
            results = await self.sink.bulk(writes)
            self._raise_for_errors(results, ignore={409, 404})
            conflicted: list[_Written] = []
            for write, result in zip(writes, results, strict=True):
                if result.status in (409, 404):
                    conflicted.append(_Written(write.index, write.doc_id, {}, None, None))
                else:
                    done.append(_Written.acknowledged(write, result))
            docs = await self._reload(conflicted)
        raise ConflictError("reference rewrites kept conflicting")

    async def _reload(self, docs: list[_Written]) -> list[_Written]:
        by_index: dict[str, list[str]] = defaultdict(list)
        for doc in docs:
            by_index[doc.index].append(doc.doc_id)
        out = []
        for index, ids in by_index.items():
            got: dict[str, Got] = await self.sink.mget(index, ids)
            for doc_id, value in got.items():
                if value.source is None:
                    continue
                if index == self.names.artifacts and not value.source.get("live"):
                    continue
                out.append(_Written(index, doc_id, value.source, value.seq_no, value.primary_term))
        return out

    # -- 5. collections -------------------------------------------------------------------

    async def _collections(
        self, keys: set[str], cache: dict[str, dict[str, Any] | None]
    ) -> list[_Written]:
        if not keys:
            return []
        written: dict[str, _Written] = {}
        pending = set(keys)
        for round_no in range(MAX_ROUNDS):
            if round_no:
                await self.sink.refresh(self.names.artifacts)
            latest = await self.sink.latest_by_key(sorted(pending))
            wanted: dict[str, dict[str, Any] | None] = {}
            keyed = [k for k in sorted(pending) if k in latest]
            pairs = [
                (latest[k][0].get("flow_run_id"), latest[k][0].get("task_run_id")) for k in keyed
            ]
            refs = await self._resolve(pairs, cache)
            for key, ref in zip(keyed, refs, strict=True):
                source, earliest_us, earliest = latest[key]
                wanted[key] = with_refs(collection_own_fields(source, earliest, earliest_us), ref)
            for key in pending - set(keyed):
                wanted[key] = None
            ids = {key: collection_id(key) for key in pending}
            key_of = {doc_id: key for key, doc_id in ids.items()}
            current = await self.sink.mget(self.names.collections, list(ids.values()))
            writes = []
            for key, desired in wanted.items():
                got = current[ids[key]]
                if got.source == desired:
                    if desired is not None:
                        written[key] = _Written(
                            self.names.collections, ids[key], desired, got.seq_no, got.primary_term
                        )
                    continue
                writes.append(
                    Write(self.names.collections, ids[key], desired, got.seq_no, got.primary_term)
                )
            results = await self.sink.bulk(writes)
            self._raise_for_errors(results, ignore={409})
            for write, result in zip(writes, results, strict=True):
                if write.source is not None and result.status < 300:
                    written[str(write.source["key"])] = _Written.acknowledged(write, result)
            if not writes:
                return list(written.values())
            # Verify what we wrote (or lost a race on) after a refresh: a concurrent
            # writer of the same key may have read the artifacts before ours were
            # visible. Keys found already correct need no second look: a writer that
            # overwrites them later verifies its own write after such a refresh.
            pending = {key_of[w.doc_id] for w in writes}
        raise ConflictError("collections did not settle")

    async def _merge_collections(
        self, merge: dict[str, list[dict[str, Any]]], cache: dict[str, dict[str, Any] | None]
    ) -> list[_Written]:
        """Fold new live artifacts into their stored collections (compare-and-set).

        No search, so no refresh: the stored collection already summarizes every
        artifact merged or recomputed before it was read, and a concurrent writer's
        change between our read and our write makes the write conflict and re-run.
        """
        written: list[_Written] = []
        pending = dict(merge)
        for _ in range(MAX_ROUNDS):
            if not pending:
                return written
            ids = {key: collection_id(key) for key in pending}
            current = await self.sink.mget(self.names.collections, list(ids.values()))
            planned: list[tuple[str, dict[str, Any], bool]] = []
            for key, candidates in pending.items():
                own, new_latest = merge_collection(current[ids[key]].source, candidates)
                planned.append((key, own, new_latest))
            pairs = [
                (own.get("flow_run_id"), own.get("task_run_id")) if new_latest else (None, None)
                for _, own, new_latest in planned
            ]
            refs = await self._resolve(pairs, cache)
            writes: list[Write] = []
            for (key, own, new_latest), ref in zip(planned, refs, strict=True):
                got = current[ids[key]]
                stored = got.source or {}
                desired = with_refs(own, ref if new_latest else refs_of(stored))
                if desired == got.source:
                    continue
                writes.append(
                    Write(self.names.collections, ids[key], desired, got.seq_no, got.primary_term)
                )
            results = await self.sink.bulk(writes)
            self._raise_for_errors(results, ignore={409})
            retry: dict[str, list[dict[str, Any]]] = {}
            for write, result in zip(writes, results, strict=True):
                assert write.source is not None
                key = str(write.source["key"])
                if result.status == 409:
                    retry[key] = pending[key]
                else:
                    written.append(_Written.acknowledged(write, result))
            pending = retry
        raise ConflictError("collection merges kept conflicting")

    # -- 6. verification -----------------------------------------------------------------

    async def _verify(self, written: list[_Written], cache: SnapshotCache) -> int:
        """Re-resolve with fresh snapshots; rewrite documents whose references moved.

        Cheap path first: if no snapshot read while resolving has a new `_seq_no`
        now, every reference written is still current.
        """
        if not written:
            return 0
        if cache.seq_nos:
            now = await self.sink.mget_versions(self.names.entities, list(cache.seq_nos))
            if all(now.get(doc_id) == seq for doc_id, seq in cache.seq_nos.items()):
                return 0
        fresh: dict[str, dict[str, Any] | None] = {}
        rewrites = await self._rewrite_refs(list(written), fresh, only_if_changed=True)
        total = len(rewrites)
        for _ in range(MAX_ROUNDS):
            if not rewrites:
                return total
            fresh = {}
            rewrites = await self._rewrite_refs(rewrites, fresh, only_if_changed=True)
            total += len(rewrites)
        raise ConflictError("references kept moving during verification")

    @staticmethod
    def _raise_for_errors(results: Iterable[Any], ignore: set[int] | None = None) -> None:
        for result in results:
            if not result.ok and (ignore is None or result.status not in ignore):
                raise TransientError(
                    f"write of {result.doc_id} failed: {result.status} {result.error}"
                )

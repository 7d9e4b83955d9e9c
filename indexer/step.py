"""PURE: one step of the indexer — consumed records + state -> state changes + writes.

A step (docs/propagation.md):

1. skips every record below its partition's stored position (a redelivery is a no-op);
2. parses the rest (poison is set aside for the dead-letter topic);
3. folds parents, then artifacts, then member records, per entity in partition order,
   keeping reverse edges and counters exact;
4. finds the documents whose content may have changed: changed artifacts, collections
   whose members changed, and — through the edges — every artifact and collection that
   embeds a changed flow run or task run;
5. builds each of those documents once (coalesced) from the final state. Documents of
   partitions this replica does not own right now get a durable mark instead, written
   when the partition becomes active; a partition that someone else may have written
   meanwhile is rewritten whole (a cursor, a bounded slice per step).

Nothing here does I/O beyond the `Tx` it is given; the runtime (indexer/runtime.py) writes
the documents with external versions, publishes member records and dead letters, then
commits the `Tx` and the Kafka offsets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from indexer import keys
from indexer.collections import (
    Member,
    apply_member,
    build_collection,
    memberships,
    partition_of,
    remember_content,
)
from indexer.fold import fold_event, fold_events, live_part
from indexer.graph import Affected, Refs, parent_changed
from indexer.state import Tx
from services.contract import ArtifactData, EntityData, Event, parse_record
from services.contract_fast import FastArtifact
from services.documents import artifact_own_fields, entity_part
from services.errors import PoisonEventError
from services.search_text import searchable
from services.trigrams import trigram_text

Doc = dict[str, Any]
TP = tuple[str, int]


class RecordLike(Protocol):
    """What a step needs of a consumed Kafka record."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class Topology:
    """Which topic carries what, and how collections are partitioned."""

    parents: dict[str, str]  # topic -> parent entity
    artifacts: str
    members: str  # the member topic (also names member partitions in local mode)
    member_partitions: int
    local_members: bool = False  # member records are applied in-process (one owner of all)
    search_text: bool = True  # documents carry their searchable text, `x` (docs/search.md)

    def is_group_topic(self, topic: str) -> bool:
        """Artifacts and members are partitioned among replicas; parents are global."""
        return topic == self.artifacts or topic == self.members


@dataclass(frozen=True, slots=True)
class Poison:
    """A record to dead-letter, with why."""

    record: RecordLike
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class DocWrite:
    """One final document; `owner` is the group partition whose epoch fences it."""

    kind: str  # "artifact" | "collection"
    doc_id: str
    owner: TP
    source: Doc


@dataclass
class StepOutput:
    """What the runtime must do before committing the step."""

    writes: list[DocWrite] = field(default_factory=list)
    members: list[tuple[int, Member]] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: int = 0
    applied: int = 0
    fanned_out: int = 0
    rewritten: int = 0
    marked: int = 0
    deferred: int = 0  # documents of owned partitions marked to be written later (backlog)
    unchanged: int = 0  # collections rebuilt to the content they already had: not rewritten


def _parse(entity: str, record: RecordLike, max_bytes: int) -> Event:
    if record.value is not None and len(record.value) > max_bytes:
        raise PoisonEventError("oversized", f"value of {len(record.value)} bytes > {max_bytes}")
    return parse_record(entity, record.key, record.value)


def _artifact_fields(data: EntityData, version: int) -> Doc:
    assert isinstance(data, ArtifactData | FastArtifact)
    return artifact_own_fields(data, version)


def _parent_part(data: EntityData, version: int) -> Doc:
    return entity_part(data)


@dataclass
class _Dirty:
    artifacts: dict[str, int] = field(default_factory=dict)  # id -> source partition
    collections: dict[str, int] = field(default_factory=dict)  # cid -> member partition


class Step:
    """Runs one step over a `Tx`. `active` maps owned group partitions to their epochs."""

    def __init__(
        self,
        tx: Tx,
        topology: Topology,
        active: dict[TP, int],
        max_event_bytes: int = 1_000_000,
        rewrite_budget: int = 5_000,
        refs: Refs | None = None,
        suspect: dict[TP, int] | None = None,
        defer: bool = False,
    ) -> None:
        self.refs = refs or Refs()
        # a backlog: documents are marked instead of written, and marks are not drained,
        # so a document changed by many steps of the backlog is written once, later
        self.defer = defer
        self.suspect = suspect or {}
        # True when the step re-applies records that an earlier run may have applied
        # without committing: its writes may sit in the index, so no "unchanged" shortcut
        self.replaying = False
        self.tx = tx
        self.topo = topology
        self.active = active
        self.max_event_bytes = max_event_bytes
        self.rewrite_budget = rewrite_budget
        self.out = StepOutput()
        self.dirty = _Dirty()
        self.forced: set[str] = set()  # documents rewritten whatever they were
        self.folded: set[str] = set()  # artifacts whose own records changed them this step
        self.affected = Affected()

    # -- entry point --------------------------------------------------------------------
    def run(self, records: Sequence[RecordLike]) -> StepOutput:
        """Apply `records` (in consumption order) and return what to write."""
        parents: dict[tuple[str, str], list[Event]] = {}
        artifacts: dict[tuple[int, str], list[tuple[int, Event]]] = {}
        members: list[tuple[int, RecordLike]] = []
        ends: dict[TP, int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            start = ends.get(tp)
            if start is None:
                start = self.tx.get(keys.position(*tp)) or 0
            if record.offset < start:
                self.out.skipped += 1
                continue
            if record.offset < self.suspect.get(tp, 0):
                self.replaying = True
            ends[tp] = record.offset + 1
            self._sort(record, parents, artifacts, members)
        for tp, end in ends.items():
            self.tx.put(keys.position(*tp), end)
        for (entity, entity_id), events in parents.items():
            self._fold_parent(entity, entity_id, events)
        for (partition, artifact_id), numbered in artifacts.items():
            self._fold_artifact(partition, artifact_id, numbered)
        for q, record in members:
            self._fold_member_record(q, record)
        self._fan_out()
        self._drain_pending()
        self._build()
        return self.out

    def _sort(
        self,
        record: RecordLike,
        parents: dict[tuple[str, str], list[Event]],
        artifacts: dict[tuple[int, str], list[tuple[int, Event]]],
        members: list[tuple[int, RecordLike]],
    ) -> None:
        topic = record.topic
        if topic == self.topo.members:
            members.append((record.partition, record))
            return
        entity = "artifact" if topic == self.topo.artifacts else self.topo.parents.get(topic)
        try:
            if entity is None:
                raise PoisonEventError("unknown_topic", f"no entity is mapped to {topic}")
            event = _parse(entity, record, self.max_event_bytes)
        except PoisonEventError as exc:
            self.out.poison.append(Poison(record, exc.reason, exc.detail))
            return
        except Exception as exc:  # a parser bug must not take the batch down with it
            self.out.poison.append(Poison(record, "parse_error", f"{type(exc).__name__}: {exc}"))
            return
        self.out.events[entity] += 1
        if entity == "artifact":
            artifacts.setdefault((record.partition, event.entity_id), []).append(
                (record.offset, event)
            )
        else:
            parents.setdefault((entity, event.entity_id), []).append(event)

    # -- folding ------------------------------------------------------------------------
    def _fold_parent(self, entity: str, entity_id: str, events: list[Event]) -> None:
        key = keys.parent(entity, entity_id)
        old = self.tx.get(key)
        if not self.replaying:
            new, applied = fold_events(old, events, _parent_part)
            if new is old:
                return
            self.out.applied += applied
            self.tx.put(key, new)
            parent_changed(
                self.tx, entity, entity_id, live_part(old), live_part(new), self.affected
            )
            return
        # A dead run may have written documents from any intermediate part of this
        # parent (its steps ended anywhere), and derived flags depend on the path: a
        # deployment that visited another flow on the way back made that flow's
        # `has_deployment` true for a while. Every transition fans out, forced.
        state, applied = old, 0
        for event in events:
            after = fold_event(state, event, _parent_part)
            if after is state:
                continue
            applied += 1
            parent_changed(
                self.tx,
                entity,
                entity_id,
                live_part(state),
                live_part(after),
                self.affected,
                force=True,
            )
            state = after
        if state is not old:
            self.out.applied += applied
            self.tx.put(key, state)

    def _fold_artifact(
        self, partition: int, artifact_id: str, numbered: list[tuple[int, Event]]
    ) -> None:
        key = keys.artifact(partition, artifact_id)
        old = self.tx.get(key)
        new, applied = old, 0
        changes: list[tuple[int, Doc | None]] = []  # (offset, own fields after it)
        for offset, event in numbered:
            state = fold_event(new, event, _artifact_fields)
            if state is not new:
                new, applied = state, applied + 1
                changes.append((offset, live_part(state)))
        if new is old:
            return
        self.out.applied += applied
        after = live_part(new)
        last_offset = numbered[-1][0]
        if self.topo.search_text and after is not None:
            # computed once per change of the artifact, not on every rewrite of its document
            text = searchable(after)
            new["s"] = list(text)
            if after.get("key") is not None:
                # and not again for its collection: the member record this step emits for
                # these fields (`memberships`, at `last_offset`) is memoized under this key
                memo = (artifact_id, last_offset, after["version"], after["updated_us"])
                self.refs.remember_searchable(memo, text)
        self.tx.put(key, new)
        before = live_part(old)
        for kind, name in ((b"f", "flow_run_id"), (b"t", "task_run_id")):
            was = None if before is None else before.get(name)
            now = None if after is None else after.get(name)
            if was != now:
                if was is not None:
                    self.tx.put_raw(keys.artifact_edge(kind, was, partition, artifact_id), False)
                if now is not None:
                    self.tx.put_raw(keys.artifact_edge(kind, now, partition, artifact_id), True)
        self.dirty.artifacts[artifact_id] = partition
        self.folded.add(artifact_id)
        for member in memberships(before, changes, artifact_id, last_offset):
            q = partition_of(member.key, self.topo.member_partitions)
            if self.topo.local_members:
                self._fold_member(q, member)
            else:
                self.out.members.append((q, member))

    def _fold_member_record(self, q: int, record: RecordLike) -> None:
        try:
            if record.value is None:
                raise ValueError("a member record has a value")
            member = Member.decode(orjson.loads(record.value))
        except (ValueError, orjson.JSONDecodeError) as exc:
            self.out.poison.append(Poison(record, "invalid_member", str(exc)[:500]))
            return
        self.out.events["member"] += 1
        self._fold_member(q, member)

    def _fold_member(self, q: int, member: Member) -> None:
        cid = apply_member(self.tx, q, member)
        if cid is not None:
            self.dirty.collections[cid] = q

    # -- what to rewrite ----------------------------------------------------------------
    def _fan_out(self) -> None:
        tx = self.tx
        before = len(self.dirty.artifacts) + len(self.dirty.collections)
        for kind, ids in ((b"f", self.affected.flow_runs), (b"t", self.affected.task_runs)):
            for target in ids:
                for key in tx.scan_keys(keys.artifact_edge_prefix(kind, target)):
                    partition, artifact_id = keys.split_tail(key)
                    self.dirty.artifacts.setdefault(artifact_id, partition)
                for key in tx.scan_keys(keys.collection_edge_prefix(kind, target)):
                    q, cid = keys.split_tail(key)
                    self.dirty.collections.setdefault(cid, q)
        self.out.fanned_out = len(self.dirty.artifacts) + len(self.dirty.collections) - before

    def _drain_pending(self) -> None:
        """Marks and rewrite cursors of active partitions, at most `rewrite_budget` a step."""
        budget = self.rewrite_budget
        for tp in sorted(self.active):
            own_key = keys.ownership(*tp)
            own = self.tx.get(own_key)
            if budget <= 0 or own is None:
                continue
            is_artifacts = tp[0] == self.topo.artifacts
            target = self.dirty.artifacts if is_artifacts else self.dirty.collections
            changed = dict(own)
            if own.get("marks") and not self.defer:
                kind = b"a" if is_artifacts else b"c"
                taken, exhausted = 0, True
                for key in self.tx.scan_keys(keys.dirty_prefix(kind, tp[1])):
                    if taken >= budget:
                        exhausted = False
                        break
                    doc_id = keys.split_tail(key)[1]
                    target.setdefault(doc_id, tp[1])
                    # written whatever it was: a run that died before its commit may have
                    # drained this mark and written a content this state never recorded
                    self.forced.add(doc_id)
                    self.tx.put_raw(key, False)
                    taken += 1
                budget -= taken
                if exhausted:
                    changed["marks"] = False
            cursor = own.get("rewrite")
            if cursor is not None and budget > 0:
                prefix = (
                    keys.artifact_prefix(tp[1]) if is_artifacts else keys.collection_prefix(tp[1])
                )
                after = prefix + cursor.encode() if cursor else None
                taken, exhausted, last = 0, True, cursor
                for key in self.tx.scan_keys(prefix, after=after):
                    if taken >= budget:
                        exhausted = False
                        break
                    last = key[-keys.ID_LEN :].decode()
                    target.setdefault(last, tp[1])
                    self.forced.add(last)
                    taken += 1
                budget -= taken
                self.out.rewritten += taken
                changed["rewrite"] = None if exhausted else last
            if changed != own:
                self.tx.put(own_key, changed)

    # -- documents ----------------------------------------------------------------------
    def _build(self) -> None:
        refs = self.refs.bind(self.tx, self.affected)
        arts, members = self.topo.artifacts, self.topo.members
        # a step re-applying what a dead run may have written writes at once: its marks
        # would be drained by a step that is not replaying and might skip "unchanged" ones
        defer = self.defer and not self.replaying
        deferred: set[TP] = set()
        for artifact_id, partition in self.dirty.artifacts.items():
            tp = (arts, partition)
            # a backlog defers what is rewritten (fan-out, marks), not an artifact's own
            # change: Elasticsearch indexes those while the backlog is folded
            later = defer and artifact_id not in self.forced and artifact_id not in self.folded
            if tp not in self.active or later:
                self.tx.put_raw(keys.dirty(b"a", partition, artifact_id), True)
                if tp in self.active:
                    deferred.add(tp)
                    self.out.deferred += 1
                else:
                    self.out.marked += 1
                continue
            state = self.tx.get(keys.artifact(partition, artifact_id))
            if state is None:
                continue  # an edge scanned in this step was removed with its artifact
            if state["d"]:
                doc: Doc = {"id": artifact_id, "live": False, "version": state["v"]}
            else:
                own = state["p"]
                doc = refs.attach(dict(own), own.get("flow_run_id"), own.get("task_run_id"))
                folded = own.get("key_ci")
                if folded is not None:
                    # derived here, not kept: smaller state, and states written before
                    # schema version 4 build complete documents
                    doc["key_tri"] = trigram_text(folded)
                if self.topo.search_text:
                    text = state.get("s")  # absent in states written before it was kept
                    doc["x"], doc["v"] = text or searchable(own)
            self.out.writes.append(DocWrite("artifact", artifact_id, tp, doc))
        for cid, q in self.dirty.collections.items():
            tp = (members, q)
            if tp not in self.active or (defer and cid not in self.forced):
                self.tx.put_raw(keys.dirty(b"c", q, cid), True)
                if tp in self.active:
                    deferred.add(tp)
                    self.out.deferred += 1
                else:
                    self.out.marked += 1
                continue
            doc = build_collection(self.tx, refs, q, cid, self.topo.search_text)
            changed = remember_content(self.tx, q, cid, doc)
            if changed or self.replaying or cid in self.forced:
                self.out.writes.append(DocWrite("collection", cid, tp, doc))
            else:
                self.out.unchanged += 1
        for tp in sorted(deferred):  # the owner drains them once no step defers
            own_key = keys.ownership(*tp)
            own = self.tx.get(own_key)
            if own is not None and not own.get("marks"):
                self.tx.put(own_key, {**own, "marks": True})


def run_step(
    tx: Tx,
    topology: Topology,
    records: Sequence[RecordLike],
    active: dict[TP, int],
    max_event_bytes: int = 1_000_000,
    rewrite_budget: int = 5_000,
    refs: Refs | None = None,
    suspect: dict[TP, int] | None = None,
    defer: bool = False,
) -> StepOutput:
    """One step: see the module docstring. `refs` may be kept across steps (memo);
    `suspect` bounds, per partition, the offsets an uncommitted run may have applied;
    `defer` marks documents instead of writing them (a backlog is being consumed)."""
    step = Step(tx, topology, active, max_event_bytes, rewrite_budget, refs, suspect, defer)
    return step.run(records)

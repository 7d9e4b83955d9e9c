"""PURE: events + stored state -> write intents (docs/propagation.md).

`reduce_events` folds one entity's events of a batch (in partition order) onto its
stored state with the contract's rules: last version wins, a delete with a higher
version deletes, a tombstone deletes whatever its version. `affected_queries`
says which artifact/collection documents must be re-resolved when a referenced
entity changed, as Elasticsearch term clauses over the documents' fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.contract import ArtifactData, Event
from services.documents import (
    artifact_marker,
    artifact_own_fields,
    collection_own_fields,
    entity_part,
    strip_refs,
)


@dataclass(frozen=True, slots=True)
class Stored:
    """What the index holds for an entity: its version, liveness and part/doc."""

    version: int
    deleted: bool
    doc: dict[str, Any] | None
    seq_no: int | None = None
    primary_term: int | None = None
    prev: dict[str, Any] | None = None


@dataclass(slots=True)
class Outcome:
    """The result of folding a batch's events for one entity."""

    entity: str
    entity_id: str
    before: Stored | None
    after: Stored | None
    changed: bool
    applied: int = 0
    stale: int = 0
    redo: bool = False

    @property
    def effective(self) -> bool:
        """Whether this batch must (re)run the entity's effects.

        True when the state changed, and also when an event equal to the stored
        version was redelivered: a crash may have cut the previous run short after
        the snapshot write, so its propagation is re-run (it is idempotent).
        """
        return self.changed or self.redo


def _apply(entity: str, state: Stored | None, event: Event) -> Stored | None:
    current = -1 if state is None else state.version
    if event.op == "tombstone":
        if state is None or state.deleted:
            return state
        return Stored(state.version, True, state.doc)
    if event.version <= current:
        return state
    if event.op == "delete":
        return Stored(event.version, True, None if state is None else state.doc)
    assert event.data is not None
    if entity == "artifact":
        assert isinstance(event.data, ArtifactData)
        return Stored(event.version, False, artifact_own_fields(event.data, event.version))
    return Stored(event.version, False, entity_part(event.data))


def reduce_events(
    entity: str, entity_id: str, stored: Stored | None, events: Iterable[Event]
) -> Outcome:
    """Fold `events` (one entity's, in partition order) onto `stored`."""
    state = stored
    applied = stale = 0
    redo = False
    for event in events:
        new = _apply(entity, state, event)
        if new is state:
            stale += 1
            if stored is not None and state is stored:
                redo = redo or event.op == "tombstone" or event.version == stored.version
        else:
            applied += 1
        state = new
    changed = state is not stored and (
        stored is None
        or state is None
        or state.deleted != stored.deleted
        or state.version != stored.version
        or state.doc != stored.doc
    )
    return Outcome(entity, entity_id, stored, state, changed, applied, stale, redo)


def snapshot_document(outcome: Outcome) -> dict[str, Any]:
    """The entities-index document for a non-artifact outcome."""
    after = outcome.after
    assert after is not None
    doc: dict[str, Any] = {"entity": outcome.entity, "version": after.version}
    doc["deleted"] = after.deleted
    if after.doc is not None:
        doc["data"] = after.doc
    before = outcome.before
    if before is not None and before.doc is not None:
        doc["prev"] = before.doc
    return doc


def artifact_document_own(outcome: Outcome) -> dict[str, Any]:
    """The artifact's own fields, or its delete marker."""
    after = outcome.after
    assert after is not None
    prev_keys = sorted(k for k in _keys(outcome.before) if k is not None)
    if after.deleted or after.doc is None:
        doc = artifact_marker(outcome.entity_id, after.version)
    else:
        doc = dict(after.doc)
    if prev_keys:
        doc["prev_keys"] = prev_keys
    return doc


def _keys(state: Stored | None) -> set[str | None]:
    if state is None or state.doc is None:
        return set()
    return {state.doc.get("key"), *state.doc.get("prev_keys", ())}


def _parts(state: Stored | None) -> list[dict[str, Any]]:
    """The current and previous parts of a stored state (a superset is harmless)."""
    if state is None:
        return []
    return [p for p in (state.doc, state.prev) if p]


def _part(state: Stored | None) -> dict[str, Any]:
    if state is None or state.deleted or state.doc is None:
        return {}
    return state.doc


def relation_adds(outcome: Outcome) -> list[tuple[str, str]]:
    """Candidate-set additions (relation doc id, member id) to make *before* the write."""
    new = _part(outcome.after)
    if outcome.entity == "flow_run" and new.get("parent_task_run_id"):
        return [(f"subflows:{new['parent_task_run_id']}", outcome.entity_id)]
    if outcome.entity == "deployment" and new.get("flow_id"):
        return [(f"deployments:{new['flow_id']}", outcome.entity_id)]
    return []


@dataclass(slots=True)
class Affected:
    """Term clauses (field -> ids) selecting documents to re-resolve."""

    terms: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        """Select documents whose `name` equals `value` (ignored when None)."""
        if value is not None:
            self.terms.setdefault(name, set()).add(str(value))

    def query(self) -> dict[str, Any] | None:
        """An ES query matching any selected document, or None if nothing is selected."""
        should = [
            {"terms": {name: sorted(values)}} for name, values in self.terms.items() if values
        ]
        if not should:
            return None
        return {"bool": {"should": should, "minimum_should_match": 1}}


def affected_by(outcome: Outcome, affected: Affected) -> None:
    """Add the documents whose references depend on this changed entity."""
    if not outcome.effective or outcome.entity == "artifact":
        return
    eid = outcome.entity_id
    parts = [*_parts(outcome.before), *_parts(outcome.after)]
    if outcome.entity == "flow_run":
        affected.add("flow_run_id", eid)
        for part in parts:
            affected.add("task_run_id", part.get("parent_task_run_id"))
    elif outcome.entity == "task_run":
        affected.add("task_run_id", eid)
        affected.add("fr.parent_task_run_id", eid)
    elif outcome.entity == "flow":
        affected.add("fr.flow_id", eid)
        affected.add("dep.flow_id", eid)
    elif outcome.entity == "deployment":
        affected.add("fr.deployment_id", eid)
        for part in parts:
            affected.add("fr.flow_id", part.get("flow_id"))


@dataclass(slots=True)
class CollectionChanges:
    """How a batch's artifact outcomes change collections.

    `merge`: key -> live artifact documents to fold into the stored collection
    (an insert or an in-place update: the latest can only move forward, the
    earliest only back). `recompute`: keys whose collection must be rebuilt from
    a search over the artifacts (an artifact left the key, was deleted, or moved
    in time; or its stored document records earlier keys).
    """

    merge: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    recompute: set[str] = field(default_factory=set)


def collection_changes(outcomes: Iterable[Outcome]) -> CollectionChanges:
    """Split the keys touched by the batch's artifact outcomes into merges and rebuilds."""
    changes = CollectionChanges()
    for outcome in outcomes:
        if outcome.entity != "artifact" or not outcome.effective:
            continue
        after = _part(outcome.after)
        after_key = after.get("key")
        before = _part(outcome.before)
        for key in _keys(outcome.before):
            if key is None:
                continue
            stays = (
                key == after_key
                and before.get("key") == key
                and before.get("created_us") == after.get("created_us")
                and key not in before.get("prev_keys", ())
            )
            if not stays:
                changes.recompute.add(key)
        if after_key is not None:
            changes.merge.setdefault(after_key, []).append(after)
    for key in changes.recompute:
        changes.merge.pop(key, None)
    return changes


def merge_collection(
    current: dict[str, Any] | None, candidates: list[dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """The collection's own fields after folding in live artifacts of its key.

    `current` is the stored collection document (None when absent). Returns the
    own fields (no references) and whether the latest artifact changed, in which
    case the references must be resolved from the new latest's run ids; otherwise
    the stored references stay valid.
    """
    best = max(candidates, key=lambda doc: (doc["created_us"], doc["id"]))
    first = min(candidates, key=lambda doc: doc["created_us"])
    if current is None:
        return collection_own_fields(best, first["created"], first["created_us"]), True
    if first["created_us"] < current["created_us"]:
        earliest, earliest_us = first["created"], first["created_us"]
    else:
        earliest, earliest_us = current["created"], current["created_us"]
    if (best["created_us"], best["id"]) >= (current["updated_us"], current["latest_id"]):
        return collection_own_fields(best, earliest, earliest_us), True
    own = strip_refs(current)
    own["created"], own["created_us"] = earliest, earliest_us
    return own, False


def stored_from_snapshot(
    doc: dict[str, Any] | None, seq_no: int | None, term: int | None
) -> Stored | None:
    """Read a stored entities-index document back into a `Stored`."""
    if doc is None:
        return None
    deleted = bool(doc.get("deleted"))
    return Stored(int(doc["version"]), deleted, doc.get("data"), seq_no, term, doc.get("prev"))


def stored_from_artifact(
    doc: dict[str, Any] | None, seq_no: int | None, term: int | None
) -> Stored | None:
    """Read a stored artifact document back into a `Stored` (own fields only)."""
    if doc is None:
        return None
    if not doc.get("live", False):
        marker = {"prev_keys": doc["prev_keys"]} if doc.get("prev_keys") else None
        return Stored(int(doc["version"]), True, marker, seq_no, term)
    own = {k: v for k, v in doc.items() if k not in ("fr", "flow", "dep", "tr")}
    return Stored(int(doc["version"]), False, own, seq_no, term)


__all__ = [
    "Affected",
    "CollectionChanges",
    "Outcome",
    "Stored",
    "affected_by",
    "artifact_document_own",
    "collection_changes",
    "merge_collection",
    "reduce_events",
    "relation_adds",
    "snapshot_document",
    "stored_from_artifact",
    "stored_from_snapshot",
]

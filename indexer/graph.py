"""PURE: the parent entities' graph — edges, derived flags, fan-out and references.

Parents (flows, deployments, flow runs, task runs) are replicated whole to every replica
(a global table). When one changes, `parent_changed` keeps the reverse edges and live
counters exact and says which flow runs and task runs now embed differently
(`Affected`); the artifacts and collections embedding those are found through their own
edges (indexer/step.py).

Why scanning the committed edges is enough: an edge that exists only in this step's
changes belongs to an entity that itself changed in this step, so it is already
affected; an edge removed in this step still appears in the committed scan, and
rewriting that document once more is harmless.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from indexer import keys
from indexer.state import Tx
from services.search_text import searchable

Doc = dict[str, Any]


@dataclass
class Affected:
    """Flow runs and task runs whose embedded form changed in this step."""

    flow_runs: set[str] = field(default_factory=set)
    task_runs: set[str] = field(default_factory=set)


def _get(part: Doc | None, name: str) -> Any:
    return None if part is None else part.get(name)


def _move_edge(tx: Tx, kind: bytes, old: str | None, new: str | None, source: str) -> None:
    if old == new:
        return
    if old is not None:
        tx.put_raw(keys.edge(kind, old, source), False)
    if new is not None:
        tx.put_raw(keys.edge(kind, new, source), True)


def _recount(tx: Tx, kind: bytes, old: str | None, new: str | None, source: str) -> list[str]:
    """Move a counted edge; the targets whose live-edge count changed."""
    if old == new:
        return []
    _move_edge(tx, kind, old, new, source)
    changed = []
    for target, delta in ((old, -1), (new, 1)):
        if target is not None:
            tx.add_count(keys.count(kind, target), delta)
            changed.append(target)
    return changed


def sources(tx: Tx, kind: bytes, target: str) -> Iterator[str]:
    """Committed sources of edges of `kind` pointing at `target`."""
    for key in tx.scan_keys(keys.edge_prefix(kind, target)):
        yield keys.edge_source(key)


def parent_changed(
    tx: Tx,
    entity: str,
    entity_id: str,
    old: Doc | None,
    new: Doc | None,
    out: Affected,
    force: bool = False,
) -> None:
    """Record that a parent's live part went from `old` to `new` (None: absent or deleted).

    An equal part changes nothing — unless `force`: a step that re-applies records an
    earlier, uncommitted run may have applied already must rewrite what that run may have
    written from an intermediate part (docs/propagation.md, "Crashes").
    """
    if old == new and not force:
        return
    if entity == "flow_run":
        out.flow_runs.add(entity_id)
        _move_edge(tx, b"f", _get(old, "flow_id"), _get(new, "flow_id"), entity_id)
        _move_edge(tx, b"d", _get(old, "deployment_id"), _get(new, "deployment_id"), entity_id)
        old_parent, new_parent = _get(old, "parent_task_run_id"), _get(new, "parent_task_run_id")
        # has_subflow_run of both parents may flip
        out.task_runs.update(_recount(tx, b"t", old_parent, new_parent, entity_id))
    elif entity == "task_run":
        out.task_runs.add(entity_id)
        if (old is None) != (new is None) or _get(old, "flow_run_id") != _get(new, "flow_run_id"):
            out.flow_runs.update(sources(tx, b"t", entity_id))  # parent_flow_run_id
    elif entity == "flow":
        out.flow_runs.update(sources(tx, b"f", entity_id))
        if _get(old, "name_ci") != _get(new, "name_ci"):
            for deployment_id in sources(tx, b"F", entity_id):  # dep.flow_name_ci
                out.flow_runs.update(sources(tx, b"d", deployment_id))
    elif entity == "deployment":
        out.flow_runs.update(sources(tx, b"d", entity_id))
        old_flow, new_flow = _get(old, "flow_id"), _get(new, "flow_id")
        for flow_id in _recount(tx, b"F", old_flow, new_flow, entity_id):
            out.flow_runs.update(sources(tx, b"f", flow_id))  # has_deployment may flip
    else:  # pragma: no cover - the caller only passes parents
        raise ValueError(f"not a parent entity: {entity}")


def live(tx: Tx, entity: str, entity_id: str) -> Doc | None:
    """A parent's live part (shared: do not mutate), or None."""
    state = tx.get(keys.parent(entity, entity_id))
    if state is None or state["d"]:
        return None
    part: Doc = state["p"]
    return part


class Refs:
    """Builds the `fr`/`flow`/`dep`/`tr` objects of documents, memoized across steps.

    An entry stays valid until its flow run or task run is `Affected` (graph rules above
    add every run or task run whose embedded form may have changed), so `forget` is
    called with each step's affected ids once its records are folded, before any document
    is built. The objects are shared by the documents that embed them: never mutated.

    Also memoizes the searchable text of fields that never change under a given memo key
    (`searchable`: a collection's latest member, rebuilt in many steps of a load).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._tx: Tx | None = None
        self.capacity = capacity
        self._runs: dict[str, tuple[Doc | None, Doc | None, Doc | None]] = {}
        self._tasks: dict[str, Doc | None] = {}
        self._texts: dict[Hashable, tuple[dict[str, str], dict[str, list[str]]]] = {}

    def bind(self, tx: Tx, affected: Affected) -> Refs:
        """Use `tx` (a step whose records are all folded) and drop what it changed."""
        self._tx = tx
        self.forget(affected)
        return self

    @property
    def tx(self) -> Tx:
        """The step being built."""
        assert self._tx is not None, "bind() a step first"
        return self._tx

    def forget(self, affected: Affected) -> None:
        """Drop what a step changed (call before building its documents)."""
        for flow_run_id in affected.flow_runs:
            self._runs.pop(flow_run_id, None)
        for task_run_id in affected.task_runs:
            self._tasks.pop(task_run_id, None)
        if len(self._runs) > self.capacity:
            self._runs.clear()
        if len(self._tasks) > self.capacity:
            self._tasks.clear()

    def clear(self) -> None:
        """Forget everything (after uncommitted steps were dropped)."""
        self._runs.clear()
        self._tasks.clear()
        self._texts.clear()

    def searchable(
        self, memo: Hashable, fields: Doc
    ) -> tuple[dict[str, str], dict[str, list[str]]]:
        """`services.search_text.searchable(fields)`, where `memo` identifies `fields`."""
        hit = self._texts.get(memo)
        if hit is None:
            if len(self._texts) >= self.capacity:
                self._texts.clear()
            hit = self._texts[memo] = searchable(fields)
        return hit

    def remember_searchable(
        self, memo: Hashable, text: tuple[dict[str, str], dict[str, list[str]]]
    ) -> None:
        """Memoize `searchable(fields)` computed elsewhere, under the memo key `searchable`
        would be asked with (the fields of a member record: artifact id, source offset,
        version, `updated_us`)."""
        if len(self._texts) >= self.capacity:
            self._texts.clear()
        self._texts[memo] = text

    def run_side(self, flow_run_id: str) -> tuple[Doc | None, Doc | None, Doc | None]:
        """(fr, flow, dep) for a flow run id."""
        hit = self._runs.get(flow_run_id)
        if hit is not None:
            return hit
        tx = self.tx
        fr_part = live(tx, "flow_run", flow_run_id)
        result: tuple[Doc | None, Doc | None, Doc | None] = (None, None, None)
        if fr_part is not None:
            fr = dict(fr_part)
            parent_id = fr.get("parent_task_run_id")
            if parent_id is not None:
                parent = live(tx, "task_run", parent_id)
                if parent is not None and parent.get("flow_run_id") is not None:
                    fr["parent_flow_run_id"] = parent["flow_run_id"]
            flow_part = live(tx, "flow", fr["flow_id"])
            flow = None
            if flow_part is not None:
                flow = dict(flow_part)
                flow["has_deployment"] = bool(tx.get(keys.count(b"F", flow["id"])))
            dep = None
            deployment_id = fr.get("deployment_id")
            if deployment_id is not None:
                dep_part = live(tx, "deployment", deployment_id)
                if dep_part is not None:
                    dep = dict(dep_part)
                    dep_flow = live(tx, "flow", dep["flow_id"])
                    if dep_flow is not None:
                        dep["flow_name_ci"] = dep_flow["name_ci"]
            result = (fr, flow, dep)
        self._runs[flow_run_id] = result
        return result

    def task_side(self, task_run_id: str) -> Doc | None:
        """tr for a task run id."""
        if task_run_id in self._tasks:
            return self._tasks[task_run_id]
        part = live(self.tx, "task_run", task_run_id)
        tr = None
        if part is not None:
            tr = dict(part)
            tr["has_subflow_run"] = bool(self.tx.get(keys.count(b"t", task_run_id)))
        self._tasks[task_run_id] = tr
        return tr

    def attach(self, doc: Doc, flow_run_id: str | None, task_run_id: str | None) -> Doc:
        """`doc` with the present reference objects added (in place; returns it)."""
        if flow_run_id is not None:
            fr, flow, dep = self.run_side(flow_run_id)
            if fr is not None:
                doc["fr"] = fr
                if flow is not None:
                    doc["flow"] = flow
                if dep is not None:
                    doc["dep"] = dep
        if task_run_id is not None:
            tr = self.task_side(task_run_id)
            if tr is not None:
                doc["tr"] = tr
        return doc

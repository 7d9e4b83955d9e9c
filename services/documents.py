"""The denormalized documents (docs/document-model.md), built by pure functions.

Entity snapshots are reduced to the *parts* the artifact document embeds
(`flow_part`, ...). `resolve_refs` assembles the `fr`/`flow`/`dep`/`tr` objects of
one artifact from a mapping of snapshot documents; when it lacks a snapshot it
returns the ids it needs instead, so an adapter can fetch them and call again.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.contract import (
    ArtifactData,
    DeploymentData,
    EntityData,
    FlowData,
    FlowRunData,
    TaskRunData,
)

COLLECTION_NAMESPACE = uuid.UUID("6f0a3a8e-7f5e-4d0b-9a49-3c1b1b0c2a55")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)

ARTIFACT_RESPONSE_FIELDS: tuple[str, ...] = (
    "id",
    "created",
    "updated",
    "key",
    "type",
    "description",
    "data",
    "metadata_",
    "flow_run_id",
    "task_run_id",
)
COLLECTION_RESPONSE_FIELDS: tuple[str, ...] = (
    "id",
    "created",
    "updated",
    "key",
    "latest_id",
    "type",
    "description",
    "data",
    "metadata_",
    "flow_run_id",
    "task_run_id",
)
REF_FIELDS: tuple[str, ...] = ("fr", "flow", "dep", "tr")

Doc = dict[str, Any]


def format_timestamp(value: datetime) -> str:
    """Prefect's JSON form of a timestamp: UTC, `Z`, microseconds only when non-zero."""
    # isoformat of a naive value omits a zero microsecond part, as Prefect does
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def format_micros(micros: int) -> str:
    """`format_timestamp` of a count of microseconds since the epoch."""
    return format_timestamp(_EPOCH + timedelta(microseconds=micros))


def to_micros(value: datetime) -> int:
    """Exact microseconds since the epoch."""
    return (value - _EPOCH) // _MICRO


def ascii_lower(value: str) -> str:
    """Lowercase A-Z only: what PostgreSQL's ILIKE folds under the C collation."""
    return value.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


_SIGN = 1 << 63
_LOW64 = (1 << 64) - 1


def id_order(doc_id: str) -> tuple[int, int]:
    """`id_hi`, `id_lo`: a UUID as two signed longs that sort like its canonical text.

    Prefect (PostgreSQL's uuid) and a keyword sort both order ids bytewise; so do the
    128-bit integer's two halves, shifted by 2**63 into Elasticsearch's signed range.
    Sorting on two longs is several times cheaper than on a keyword, above all for
    deep pages, where every shard returns `from + size` sort values.
    """
    value = uuid.UUID(doc_id).int
    return (value >> 64) - _SIGN, (value & _LOW64) - _SIGN


@functools.lru_cache(maxsize=65536)
def collection_id(key: str) -> str:
    """The derived id of the collection of `key`."""
    return str(uuid.uuid5(COLLECTION_NAMESPACE, key))


def _put(doc: Doc, name: str, value: Any) -> None:
    if value is not None and value != []:
        doc[name] = value


def _put_time(doc: Doc, name: str, value: datetime | None) -> None:
    if value is not None:
        doc[name + "_us"] = to_micros(value)


def _sid(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def flow_part(data: FlowData) -> Doc:
    """The flow fields artifact documents embed (without derived fields)."""
    doc: Doc = {"id": str(data.id), "name": data.name, "name_ci": ascii_lower(data.name)}
    _put(doc, "tags", list(data.tags))
    return doc


def deployment_part(data: DeploymentData) -> Doc:
    """The deployment fields artifact documents embed (without derived fields)."""
    doc: Doc = {
        "id": str(data.id),
        "name": data.name,
        "name_ci": ascii_lower(data.name),
        "flow_id": str(data.flow_id),
        "paused": data.paused,
    }
    _put(doc, "tags", list(data.tags))
    _put(doc, "work_queue_name", data.work_queue_name)
    return doc


def flow_run_part(data: FlowRunData) -> Doc:
    """The flow-run fields artifact documents embed (without derived fields)."""
    doc: Doc = {
        "id": str(data.id),
        "name": data.name,
        "name_ci": ascii_lower(data.name),
        "flow_id": str(data.flow_id),
    }
    _put(doc, "deployment_id", _sid(data.deployment_id))
    _put(doc, "work_queue_name", data.work_queue_name)
    _put(doc, "flow_version", data.flow_version)
    _put(doc, "tags", list(data.tags))
    _put(doc, "state_type", None if data.state_type is None else data.state_type.value)
    _put(doc, "state_name", data.state_name)
    _put_time(doc, "start_time", data.start_time)
    _put_time(doc, "end_time", data.end_time)
    _put_time(doc, "expected_start_time", data.expected_start_time)
    _put_time(doc, "next_scheduled_start_time", data.next_scheduled_start_time)
    coalesced = data.start_time if data.start_time is not None else data.expected_start_time
    _put_time(doc, "start_or_expected", coalesced)
    _put(doc, "parent_task_run_id", _sid(data.parent_task_run_id))
    _put(doc, "idempotency_key", data.idempotency_key)
    doc["created_by_set"] = data.created_by is not None
    if data.created_by is not None:
        _put(doc, "created_by_id", _sid(data.created_by.id))
        _put(doc, "created_by_type", data.created_by.type)
    return doc


def task_run_part(data: TaskRunData) -> Doc:
    """The task-run fields artifact documents embed (without derived fields)."""
    doc: Doc = {"id": str(data.id), "name": data.name, "name_ci": ascii_lower(data.name)}
    _put(doc, "flow_run_id", _sid(data.flow_run_id))
    _put(doc, "tags", list(data.tags))
    _put(doc, "state_type", None if data.state_type is None else data.state_type.value)
    _put(doc, "state_name", data.state_name)
    _put_time(doc, "start_time", data.start_time)
    _put_time(doc, "end_time", data.end_time)
    _put_time(doc, "expected_start_time", data.expected_start_time)
    return doc


def entity_part(data: EntityData) -> Doc:
    """Dispatch to the part builder of the snapshot's entity."""
    if isinstance(data, FlowData):
        return flow_part(data)
    if isinstance(data, DeploymentData):
        return deployment_part(data)
    if isinstance(data, FlowRunData):
        return flow_run_part(data)
    if isinstance(data, TaskRunData):
        return task_run_part(data)
    raise TypeError(f"artifacts have no part: {type(data).__name__}")


def artifact_own_fields(data: ArtifactData, version: int) -> Doc:
    """The artifact document without its `fr`/`flow`/`dep`/`tr` objects."""
    doc: Doc = {
        "id": str(data.id),
        "created": format_timestamp(data.created),
        "updated": format_timestamp(data.updated),
        "key": data.key,
        "type": data.type,
        "description": data.description,
        "data": data.data,
        "metadata_": data.metadata_,
        "flow_run_id": _sid(data.flow_run_id),
        "task_run_id": _sid(data.task_run_id),
        "live": True,
        "version": version,
        "created_us": to_micros(data.created),
        "updated_us": to_micros(data.updated),
    }
    doc["id_hi"], doc["id_lo"] = id_order(doc["id"])
    if data.key is not None:
        doc["key_ci"] = ascii_lower(data.key)
    return doc


def artifact_marker(artifact_id: str, version: int) -> Doc:
    """The document kept for a deleted artifact, so stale upserts stay rejected."""
    return {"id": artifact_id, "live": False, "version": version}


def strip_refs(doc: Mapping[str, Any]) -> Doc:
    """A copy of a stored document without its reference objects."""
    return {k: v for k, v in doc.items() if k not in REF_FIELDS}


# --- snapshot documents in the entities index -------------------------------------


def snapshot_id(entity: str, entity_id: str) -> str:
    """The `_id` of an entity snapshot document."""
    return f"{entity}:{entity_id}"


def subflows_id(task_run_id: str) -> str:
    """The `_id` of the candidate set of flow runs whose parent is this task run."""
    return f"subflows:{task_run_id}"


def deployments_id(flow_id: str) -> str:
    """The `_id` of the candidate set of deployments of this flow."""
    return f"deployments:{flow_id}"


@dataclass(frozen=True, slots=True)
class NeedDocs:
    """`resolve_refs` could not finish: fetch these `_id`s of the entities index."""

    ids: frozenset[str]


def _live_part(snapshots: Mapping[str, Doc | None], doc_id: str, need: set[str]) -> Doc | None:
    if doc_id not in snapshots:
        need.add(doc_id)
        return None
    snap = snapshots[doc_id]
    if snap is None or snap.get("deleted"):
        return None
    part = snap.get("data")
    return dict(part) if isinstance(part, dict) else None


def _members(snapshots: Mapping[str, Doc | None], doc_id: str, need: set[str]) -> list[str]:
    if doc_id not in snapshots:
        need.add(doc_id)
        return []
    snap = snapshots[doc_id]
    return list(snap.get("members", [])) if snap else []


def _any_points_at(
    snapshots: Mapping[str, Doc | None],
    entity: str,
    members: Iterable[str],
    field: str,
    target: str,
    need: set[str],
) -> bool:
    found = False
    for member in members:
        part = _live_part(snapshots, snapshot_id(entity, member), need)
        if part is not None and part.get(field) == target:
            found = True
    return found


def resolve_refs(
    flow_run_id: str | None, task_run_id: str | None, snapshots: Mapping[str, Doc | None]
) -> Doc | NeedDocs:
    """The `fr`, `flow`, `dep`, `tr` objects for an artifact (absent ones are None).

    `snapshots` maps entities-index `_id`s to their stored documents (None when
    missing). Returns `NeedDocs` when a needed `_id` is not in the mapping.
    """
    need: set[str] = set()
    refs: Doc = {"fr": None, "flow": None, "dep": None, "tr": None}
    if flow_run_id is not None:
        fr = _live_part(snapshots, snapshot_id("flow_run", flow_run_id), need)
        if fr is not None:
            parent_tr = fr.get("parent_task_run_id")
            if parent_tr is not None:
                parent = _live_part(snapshots, snapshot_id("task_run", parent_tr), need)
                if parent is not None and parent.get("flow_run_id") is not None:
                    fr["parent_flow_run_id"] = parent["flow_run_id"]
            refs["fr"] = fr
            flow = _live_part(snapshots, snapshot_id("flow", fr["flow_id"]), need)
            if flow is not None:
                members = _members(snapshots, deployments_id(flow["id"]), need)
                flow["has_deployment"] = _any_points_at(
                    snapshots, "deployment", members, "flow_id", flow["id"], need
                )
                refs["flow"] = flow
            deployment_id = fr.get("deployment_id")
            if deployment_id is not None:
                dep = _live_part(snapshots, snapshot_id("deployment", deployment_id), need)
                if dep is not None:
                    dep_flow = _live_part(snapshots, snapshot_id("flow", dep["flow_id"]), need)
                    if dep_flow is not None:
                        dep["flow_name_ci"] = dep_flow["name_ci"]
                    refs["dep"] = dep
    if task_run_id is not None:
        tr = _live_part(snapshots, snapshot_id("task_run", task_run_id), need)
        if tr is not None:
            members = _members(snapshots, subflows_id(task_run_id), need)
            tr["has_subflow_run"] = _any_points_at(
                snapshots, "flow_run", members, "parent_task_run_id", task_run_id, need
            )
            refs["tr"] = tr
    if need:
        return NeedDocs(frozenset(need))
    return refs


def with_refs(own: Mapping[str, Any], refs: Mapping[str, Any]) -> Doc:
    """An artifact or collection document: own fields plus the present references."""
    doc = dict(own)
    for name in REF_FIELDS:
        value = refs.get(name)
        if value is not None:
            doc[name] = value
    return doc


def refs_of(doc: Mapping[str, Any]) -> Doc:
    """The reference objects stored in a document (None where absent)."""
    return {name: doc.get(name) for name in REF_FIELDS}


def collection_own_fields(
    latest: Mapping[str, Any], earliest_created: str, earliest_us: int
) -> Doc:
    """A collection document's own fields from its latest artifact's own fields."""
    key = latest["key"]
    doc_id = collection_id(key)
    id_hi, id_lo = id_order(doc_id)
    return {
        "id": doc_id,
        "id_hi": id_hi,
        "id_lo": id_lo,
        "created": earliest_created,
        "updated": latest["created"],
        "key": key,
        "latest_id": latest["id"],
        "type": latest.get("type"),
        "description": latest.get("description"),
        "data": latest.get("data"),
        "metadata_": latest.get("metadata_"),
        "flow_run_id": latest.get("flow_run_id"),
        "task_run_id": latest.get("task_run_id"),
        "created_us": earliest_us,
        "updated_us": latest["created_us"],
        "key_ci": ascii_lower(key),
    }

"""The lifecycle event contract, version 1 (docs/contract.md): parse only.

`parse_record` turns one Kafka record into an `Event` (upsert, delete or
tombstone) or raises `PoisonEventError` naming why the record can never apply.
Envelope fields are strict; unknown fields in the envelope and in `data` are
ignored, as the contract allows producers to add optional fields.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    create_model,
)

from services.contract_fast import (
    FastArtifact,
    FastDeployment,
    FastFlow,
    FastFlowRun,
    FastTaskRun,
    decode_envelope,
)
from services.errors import PoisonEventError
from services.prefect.filters import StateType

ENTITIES: tuple[str, ...] = ("flow", "deployment", "flow_run", "task_run", "artifact")
EntityName = Literal["flow", "deployment", "flow_run", "task_run", "artifact"]


def _utc(value: datetime) -> datetime:
    """Naive timestamps are taken as UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:59:59-05:00: a validation error
        raise ValueError("timestamp is out of range once converted to UTC") from exc


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID
    created: UtcDatetime
    updated: UtcDatetime


class FlowData(_Data):
    """A flow snapshot."""

    name: str
    tags: list[str] = Field(default_factory=list)


class DeploymentData(_Data):
    """A deployment snapshot."""

    name: str
    flow_id: uuid.UUID
    tags: list[str] = Field(default_factory=list)
    paused: bool = False
    work_queue_name: str | None = None
    concurrency_limit: int | None = None


class CreatedBy(BaseModel):
    """Who created a flow run (Prefect's `created_by` object)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID | None = None
    type: str | None = None
    display_value: str | None = None


class FlowRunData(_Data):
    """A flow run snapshot."""

    name: str
    flow_id: uuid.UUID
    deployment_id: uuid.UUID | None = None
    work_queue_name: str | None = None
    flow_version: str | None = None
    tags: list[str] = Field(default_factory=list)
    state_type: StateType | None = None
    state_name: str | None = None
    start_time: UtcDatetime | None = None
    end_time: UtcDatetime | None = None
    expected_start_time: UtcDatetime | None = None
    next_scheduled_start_time: UtcDatetime | None = None
    parent_task_run_id: uuid.UUID | None = None
    idempotency_key: str | None = None
    created_by: CreatedBy | None = None


class TaskRunData(_Data):
    """A task run snapshot."""

    name: str
    flow_run_id: uuid.UUID | None = None
    tags: list[str] = Field(default_factory=list)
    state_type: StateType | None = None
    state_name: str | None = None
    start_time: UtcDatetime | None = None
    end_time: UtcDatetime | None = None
    expected_start_time: UtcDatetime | None = None


class ArtifactData(_Data):
    """An artifact snapshot."""

    key: str | None = None
    type: str | None = None
    description: str | None = None
    data: Any = None
    metadata_: dict[str, str] | None = None
    flow_run_id: uuid.UUID | None = None
    task_run_id: uuid.UUID | None = None


EntityData = (
    FlowData
    | DeploymentData
    | FlowRunData
    | TaskRunData
    | ArtifactData
    | FastFlow
    | FastDeployment
    | FastFlowRun
    | FastTaskRun
    | FastArtifact
)
"""A snapshot as the full parser (pydantic) or the fast path (msgspec) gives it: the same
field names and values, ids as `uuid.UUID` or canonical strings."""

MAX_INDEXED_STRING_BYTES = 32_766
"""Largest UTF-8 size of a string the index stores as a keyword term (Lucene's term limit).

Elasticsearch rejects a longer term with a 400 (`immense term`) that no retry can fix, so
such an event is dead-lettered at parse time (`value_too_large`) instead."""

MAX_DATA_DEPTH = 128
"""Deepest nesting of arrays/objects in an artifact's `data` (a scalar is depth 0, `[]` is 1).

Deeper values break Python's JSON encoders on the way to Elasticsearch (recursion limit) or
back out of the API (orjson stops at 254 levels): dead-lettered as `too_deep`."""

INDEXED_STRINGS: dict[str, tuple[str, ...]] = {
    "flow": ("name", "tags"),
    "deployment": ("name", "tags", "work_queue_name"),
    "flow_run": (
        "name",
        "work_queue_name",
        "flow_version",
        "tags",
        "state_name",
        "idempotency_key",
        "created_by.type",
    ),
    "task_run": ("name", "tags", "state_name"),
    "artifact": ("key", "type"),
}
"""The `data` fields of each entity that end up in keyword fields of some index."""

DATA_MODELS: dict[str, type[_Data]] = {
    "flow": FlowData,
    "deployment": DeploymentData,
    "flow_run": FlowRunData,
    "task_run": TaskRunData,
    "artifact": ArtifactData,
}


class Envelope(BaseModel):
    """The JSON value of a non-tombstone record."""

    model_config = ConfigDict(extra="ignore")

    event_id: uuid.UUID
    op: Literal["upsert", "delete"]
    entity: EntityName
    entity_id: uuid.UUID
    version: StrictInt = Field(ge=0, le=2**63 - 1)
    occurred: UtcDatetime
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One parsed record. `op` is 'upsert', 'delete' or 'tombstone'."""

    entity: str
    entity_id: str
    op: str
    version: int
    data: EntityData | None
    event_id: str | None


_CANONICAL_KEY = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _canonical_key(key: bytes | None) -> str:
    if key is None:
        raise PoisonEventError("missing_key", "the record has no key")
    if _CANONICAL_KEY.fullmatch(key):  # the common case: exactly what str(UUID(text)) gives
        return key.decode()
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonEventError("invalid_key", "the record key is not UTF-8") from exc
    try:
        parsed = uuid.UUID(text)
    except ValueError as exc:
        raise PoisonEventError(
            "invalid_key", f"the record key {text[:80]!r} is not a UUID"
        ) from exc
    if str(parsed) != text:
        raise PoisonEventError(
            "invalid_key", f"the record key {text[:80]!r} is not a canonical lowercase UUID"
        )
    return text


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than `limit` (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


_INDEXED_PATHS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    entity: tuple((path, tuple(path.split("."))) for path in paths)
    for entity, paths in INDEXED_STRINGS.items()
}


def _check_indexed_sizes(entity: str, data: Any) -> None:
    for path, parts in _INDEXED_PATHS[entity]:
        value: Any = data
        for part in parts:
            value = getattr(value, part, None)
        if value is None:
            continue
        for item in value if isinstance(value, list) else (value,):
            # a string of at most MAX/4 characters cannot exceed MAX bytes of UTF-8
            if isinstance(item, str) and len(item) * 4 > MAX_INDEXED_STRING_BYTES:
                size = len(item.encode("utf-8"))
                if size > MAX_INDEXED_STRING_BYTES:
                    raise PoisonEventError(
                        "value_too_large",
                        f"data.{path} is {size} bytes of UTF-8, more than the "
                        f"{MAX_INDEXED_STRING_BYTES} an indexed string may have",
                    )


def parse_record(entity: str, key: bytes | None, value: bytes | None) -> Event:
    """Parse one record consumed from the topic of `entity`.

    Raises `PoisonEventError` for anything the contract says must be
    dead-lettered: bad key, bad JSON, envelope or data validation failures,
    entity/topic or entity_id/key/data.id mismatches, an indexed string longer
    than `MAX_INDEXED_STRING_BYTES`, an artifact `data` deeper than `MAX_DATA_DEPTH`.
    """
    entity_id = _canonical_key(key)
    if value is None:
        return Event(entity, entity_id, "tombstone", 0, None, None)
    fast = _parse_valid(entity, entity_id, value)
    if fast is not None:
        return fast
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PoisonEventError("invalid_json", f"value is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise PoisonEventError("invalid_envelope", "value is not a JSON object")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise PoisonEventError("invalid_envelope", _describe(exc)) from exc
    if envelope.entity != entity:
        raise PoisonEventError(
            "entity_mismatch", f"entity {envelope.entity!r} arrived on the topic of {entity!r}"
        )
    if str(envelope.entity_id) != entity_id:
        raise PoisonEventError(
            "key_mismatch", f"entity_id {envelope.entity_id} differs from the key {entity_id}"
        )
    if envelope.op == "delete":
        return Event(entity, entity_id, "delete", envelope.version, None, str(envelope.event_id))
    if envelope.data is None:
        raise PoisonEventError("invalid_data", "an upsert needs `data`")
    try:
        data: EntityData = DATA_MODELS[entity].model_validate(envelope.data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise PoisonEventError("invalid_data", _describe(exc)) from exc
    if str(data.id) != entity_id:
        raise PoisonEventError("id_mismatch", f"data.id {data.id} differs from the key {entity_id}")
    _check_indexed_sizes(entity, data)
    if isinstance(data, ArtifactData) and _depth_exceeds(data.data, MAX_DATA_DEPTH):
        raise PoisonEventError(
            "too_deep", f"data.data nests arrays/objects deeper than {MAX_DATA_DEPTH} levels"
        )
    return Event(entity, entity_id, "upsert", envelope.version, data, str(envelope.event_id))


def _parse_valid(entity: str, entity_id: str, value: bytes) -> Event | None:
    """The common case in one pass (services/contract_fast.py); None when anything is off,
    and `parse_record`'s step-by-step path then names the exact reason."""
    envelope = decode_envelope(entity, value)
    if envelope is None or envelope.entity != entity or envelope.entity_id != entity_id:
        return None
    if envelope.op == "delete":
        return Event(entity, entity_id, "delete", envelope.version, None, envelope.event_id)
    data = envelope.data
    if data is None or data.id != entity_id:
        return None
    _check_indexed_sizes(entity, data)
    if isinstance(data, FastArtifact) and _depth_exceeds(data.data, MAX_DATA_DEPTH):
        return None
    return Event(entity, entity_id, "upsert", envelope.version, data, envelope.event_id)


def encode_event(
    entity: str,
    entity_id: str,
    op: str,
    version: int,
    data: dict[str, Any] | None,
    occurred: datetime | None = None,
    event_id: str | None = None,
) -> bytes:
    """Serialize an envelope the way producers must (used by demo, replay tests, backfill,
    sync); a random event id unless one is given."""
    envelope = {
        "event_id": event_id or str(uuid.uuid4()),
        "op": op,
        "entity": entity,
        "entity_id": entity_id,
        "version": version,
        "occurred": (occurred or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    return orjson.dumps(envelope, default=str)


def _event_model(entity: str, data_model: type[_Data]) -> type[BaseModel]:
    """A documentation model of one topic's envelope with its entity's `data`."""
    fields: dict[str, Any] = {
        "entity": (Literal[entity], Field(description="Always the topic's entity")),
        "data": (
            data_model | None,
            Field(default=None, description="The full snapshot; required for `upsert`"),
        ),
    }
    name = "".join(part.title() for part in entity.split("_")) + "Event"
    return create_model(name, __base__=Envelope, **fields)


EVENT_MODELS: dict[str, type[BaseModel]] = {
    entity: _event_model(entity, model) for entity, model in DATA_MODELS.items()
}
"""Per-entity envelope models, used to document the topics (AsyncAPI)."""

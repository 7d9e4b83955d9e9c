"""Seeded, pure generator of Prefect-shaped datasets.

A :class:`Dataset` is the *final* state of a Prefect-like system: the snapshots of
every flow, deployment, flow run, task run and artifact that survive, each as the
plain JSON dict a producer would put in an event's ``data`` (Prefect REST field
names, timestamps as strings). It also keeps the snapshots of entities that were
deleted (:attr:`Dataset.deleted`): the surviving entities still reference some of
them, which is how dangling references arise, and event-stream generators can
replay them as an upsert followed by a delete.

Most artifacts carry realistic content (``datagen.content``: reports, tables, links,
metadata) for the search extension; the others keep the edge cases below.

The generator is deterministic per ``(seed, scale)`` and uses only ``random.Random``,
so it is fast enough for benchmark-sized datasets (about a microsecond budget per
field). Values are drawn from small vocabularies on purpose, so that equality,
``any_`` and ``like_`` filters hit several rows, and they include the awkward cases
a translator must get right: mixed case, SQL wildcard characters, backslashes,
non-ASCII text, NULLs, empty lists, tied timestamps and zero microseconds.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from datagen.content import realistic_content
from services.documents import COLLECTION_NAMESPACE as DOCUMENTS_COLLECTION_NAMESPACE

__all__ = [
    "ARTIFACT_TYPES",
    "COLLECTION_NAMESPACE",
    "ENTITY_NAMES",
    "STATE_NAMES",
    "STATE_TYPES",
    "Dataset",
    "DatasetScale",
    "JsonDict",
    "collection_id",
    "compute_collections",
    "dataset_from_dict",
    "dataset_from_json",
    "dataset_to_dict",
    "dataset_to_json",
    "format_timestamp",
    "generate_dataset",
    "iter_entities",
    "parse_timestamp",
    "timestamp_us",
]

JsonDict = dict[str, Any]
T = TypeVar("T")

#: Namespace of the UUIDv5 collection ids: the project's one constant (services/documents.py).
COLLECTION_NAMESPACE: Final = DOCUMENTS_COLLECTION_NAMESPACE

#: Entity names in dependency order (the order in which a loader inserts them).
ENTITY_NAMES: Final = ("flow", "deployment", "flow_run", "task_run", "artifact")

STATE_TYPES: Final = (
    "SCHEDULED",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "CRASHED",
    "PAUSED",
    "CANCELLING",
)

#: Plausible state names per state type (the first one is the canonical name).
STATE_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "SCHEDULED": ("Scheduled", "Late", "AwaitingRetry"),
    "PENDING": ("Pending",),
    "RUNNING": ("Running", "Retrying"),
    "COMPLETED": ("Completed", "Cached"),
    "FAILED": ("Failed",),
    "CANCELLED": ("Cancelled",),
    "CRASHED": ("Crashed",),
    "PAUSED": ("Paused", "Suspended"),
    "CANCELLING": ("Cancelling",),
}

#: Artifact types (``None`` is a valid, stored type).
ARTIFACT_TYPES: Final = ("result", "markdown", "table", "progress", "link", "image", None)

_EPOCH: Final = datetime(1970, 1, 1)  # naive on purpose: isoformat() then appends "Z"
_BASE_US: Final = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
_SPAN_US: Final = 60 * 86_400 * 1_000_000  # sixty days
_SECOND: Final = 1_000_000

# --- vocabularies --------------------------------------------------------------------

_FLOW_WORDS: Final = (
    "etl",
    "ETL",
    "ingest",
    "Ingest",
    "report",
    "train-model",
    "sync",
    "backup",
    "données",
    "naïve",
    "100%_done",
    "under_score",
    "back\\slash",
    "日本語",
    "percent%",
)
_FLOW_SUFFIXES: Final = ("daily", "Hourly", "adhoc", "v2", "ÜBER", "x_y")
_DEPLOYMENT_NAMES: Final = (
    "prod",
    "Prod",
    "staging",
    "dev",
    "nightly",
    "on-demand",
    "50%_canary",
    "wörker",
    "back\\up",
)
_RUN_ADJECTIVES: Final = ("crimson", "Brave", "silent", "quick", "lazy", "ÉLAN", "odd_one")
_RUN_NOUNS: Final = ("fox", "owl", "Cat", "panda", "yak", "100%", "鶴")
_TASK_NAMES: Final = (
    "load_data",
    "Transform",
    "fetch%rows",
    "write-out",
    "validate",
    "ünïcode_task",
    "slash\\task",
)
_TAGS: Final = (
    "prod",
    "Prod",
    "dev",
    "nightly",
    "team:a",
    "team:b",
    "ml",
    "ünï",
    "50%",
    "a_b",
    "x\\y",
)
_WORK_QUEUES: Final = ("default", "Default", "gpu", "high_priority", "q%1")
_FLOW_VERSIONS: Final = ("1.0", "1.1", "2.0-beta", "abc123", "Ünï-1")
_IDEMPOTENCY: Final = (
    "scheduled-a",
    "scheduled-b",
    "manual",
    "Retry_1",
    "ключ",
    "100%",
)
_CREATOR_TYPES: Final = ("DEPLOYMENT", "AUTOMATION", "USER", "deployment")
_SPECIAL_KEYS: Final = (
    "report",
    "Report",
    "REPORT",
    "my-key",
    "my_key",
    "mykey",
    "100%-done",
    "under_score",
    "back\\slash",
    "ünïcode-ключ",
    "日本語-キー",
    "a%b_c",
    "x",
    "Z",
    "key with spaces",
    "~tilde",
    "ß",
)
_KEY_STEMS: Final = ("sales", "Sales", "model-metrics", "daily_report", "inventory", "ÆON")
_DESCRIPTIONS: Final = (
    "# Report\nAll good.",
    "Model accuracy: **0.93**",
    "plain text",
    "Ünïcode déscription — ✓",
    "50% done_so_far \\o/",
    "",
)
GENERATOR_VERSION: Final = 2
"""Changes whenever a seed's dataset changes (2: realistic content), so that databases and
files kept from an earlier generator are not taken for this one's."""
REALISTIC_SHARE: Final = 0.6
"""The share of artifacts whose content is realistic (datagen/content.py) rather than the
edge cases below."""
_META_KEYS: Final = ("source", "owner", "Env", "run", "ünï")
_META_VALUES: Final = ("s3", "alice", "prod", "42", "ñ", "a%b")


@dataclass(frozen=True, slots=True)
class DatasetScale:
    """How many surviving entities of each kind to generate."""

    flows: int = 12
    deployments: int = 10
    flow_runs: int = 120
    task_runs: int = 300
    artifacts: int = 1000

    @classmethod
    def tiny(cls) -> DatasetScale:
        return cls(flows=4, deployments=3, flow_runs=12, task_runs=30, artifacts=60)

    @classmethod
    def small(cls) -> DatasetScale:
        return cls()

    @classmethod
    def for_artifacts(cls, artifacts: int) -> DatasetScale:
        """A scale with ``artifacts`` artifacts and proportionate related entities."""
        flows = max(4, min(2_000, artifacts // 100))
        return cls(
            flows=flows,
            deployments=max(3, flows * 3 // 4),
            flow_runs=max(12, artifacts // 8),
            task_runs=max(30, artifacts // 3),
            artifacts=artifacts,
        )


@dataclass(slots=True)
class Dataset:
    """Final state of a generated system; every entity is a Prefect-shaped JSON dict."""

    seed: int
    scale: DatasetScale
    flows: list[JsonDict] = field(default_factory=list)
    deployments: list[JsonDict] = field(default_factory=list)
    flow_runs: list[JsonDict] = field(default_factory=list)
    task_runs: list[JsonDict] = field(default_factory=list)
    artifacts: list[JsonDict] = field(default_factory=list)
    #: Snapshots of deleted entities, by entity name (see :data:`ENTITY_NAMES`).
    deleted: dict[str, list[JsonDict]] = field(
        default_factory=lambda: {name: [] for name in ENTITY_NAMES}
    )

    def entities(self, name: str) -> list[JsonDict]:
        """The surviving snapshots of one entity kind (``flow``, ..., ``artifact``)."""
        lists = {
            "flow": self.flows,
            "deployment": self.deployments,
            "flow_run": self.flow_runs,
            "task_run": self.task_runs,
            "artifact": self.artifacts,
        }
        return lists[name]

    def collections(self) -> list[JsonDict]:
        """The artifact collections the surviving artifacts imply (contract rule 5)."""
        return compute_collections(self.artifacts)


# --- timestamps ----------------------------------------------------------------------


def format_timestamp(us: int) -> str:
    """Microseconds since the epoch -> ``2024-01-01T00:00:00.123456Z`` (UTC).

    The fraction is omitted when it is zero, which is how Prefect's API renders it.
    """
    return (_EPOCH + timedelta(microseconds=us)).isoformat() + "Z"


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp into a timezone-aware UTC datetime."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def timestamp_us(value: str) -> int:
    """RFC 3339 timestamp -> integer microseconds since the epoch."""
    delta = parse_timestamp(value) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- collections ---------------------------------------------------------------------


def collection_id(key: str) -> str:
    """The id of the collection of ``key``: ``uuid5(COLLECTION_NAMESPACE, key)``."""
    return str(uuid.uuid5(COLLECTION_NAMESPACE, key))


def compute_collections(artifacts: Iterable[JsonDict]) -> list[JsonDict]:
    """One collection per non-null key over ``artifacts`` (contract rule 5).

    The latest artifact is the one with the greatest ``(created, id)``; the
    collection's ``created`` is the smallest ``created`` of the key's artifacts and
    its ``updated`` is the latest artifact's ``created``. Sorted by key (code points).
    """
    latest: dict[str, tuple[int, str, JsonDict]] = {}
    first: dict[str, tuple[int, str]] = {}
    for artifact in artifacts:
        key = artifact.get("key")
        if key is None:
            continue
        created = artifact["created"]
        created_us = timestamp_us(created)
        rank = (created_us, artifact["id"])
        current = latest.get(key)
        if current is None or rank > current[:2]:
            latest[key] = (created_us, artifact["id"], artifact)
        earliest = first.get(key)
        if earliest is None or created_us < earliest[0]:
            first[key] = (created_us, created)
    collections: list[JsonDict] = []
    for key in sorted(latest):
        art = latest[key][2]
        collections.append(
            {
                "id": collection_id(key),
                "created": first[key][1],
                "updated": art["created"],
                "key": key,
                "latest_id": art["id"],
                "type": art.get("type"),
                "description": art.get("description"),
                "data": art.get("data"),
                "metadata_": art.get("metadata_"),
                "flow_run_id": art.get("flow_run_id"),
                "task_run_id": art.get("task_run_id"),
            }
        )
    return collections


# --- the generator -------------------------------------------------------------------


class _Gen:
    """Holds the random source and the draw helpers of one generation."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tie_pool: list[int] = []

    def uuid(self) -> str:
        bits = self.rng.getrandbits(128)
        bits &= ~(0xF000 << 64)
        bits |= 0x4000 << 64  # version 4
        bits &= ~(0xC000 << 48)
        bits |= 0x8000 << 48  # RFC 4122 variant
        return str(uuid.UUID(int=bits))

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.rng.randrange(len(seq))]

    def moment(self) -> int:
        """A timestamp in the base window; some whole seconds, some re-used."""
        rng = self.rng
        if self.tie_pool and rng.random() < 0.12:
            return self.tie_pool[rng.randrange(len(self.tie_pool))]
        us = _BASE_US + rng.randrange(_SPAN_US)
        if rng.random() < 0.08:
            us -= us % _SECOND
        if len(self.tie_pool) < 64:
            self.tie_pool.append(us)
        return us

    def later(self, us: int, max_seconds: int = 3_600) -> int:
        rng = self.rng
        if rng.random() < 0.25:
            return us
        step = rng.randrange(1, max_seconds * _SECOND)
        if rng.random() < 0.1:
            step -= step % _SECOND
        return us + max(step, 1)

    def tags(self, p_empty: float = 0.3) -> list[str]:
        if self.rng.random() < p_empty:
            return []
        return self.rng.sample(_TAGS, self.rng.randint(1, 3))

    def stamps(self) -> tuple[int, int]:
        created = self.moment()
        return created, self.later(created)

    def state(self, p_null: float = 0.04) -> tuple[str | None, str | None]:
        if self.rng.random() < p_null:
            return None, None
        state_type = self.pick(STATE_TYPES)
        return state_type, self.pick(STATE_NAMES[state_type])


def _ts(us: int | None) -> str | None:
    return None if us is None else format_timestamp(us)


def _run_times(
    gen: _Gen, created: int, state_type: str | None
) -> tuple[int | None, int | None, int | None]:
    """(expected_start, start, end) consistent with the state, with some noise."""
    rng = gen.rng
    expected: int | None = gen.later(created, 7_200) if rng.random() > 0.05 else None
    start: int | None = None
    end: int | None = None
    base = expected if expected is not None else created
    if state_type in ("RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED", "CANCELLING"):
        if rng.random() > 0.1:
            start = gen.later(base, 600)
    elif state_type == "PAUSED" and rng.random() < 0.5:
        start = gen.later(base, 600)
    if state_type in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED") and rng.random() > 0.1:
        end = gen.later(start if start is not None else base, 3_600)
    return expected, start, end


def _flows(gen: _Gen, count: int) -> list[JsonDict]:
    names: set[str] = set()
    flows: list[JsonDict] = []
    for i in range(count):
        name = f"{gen.pick(_FLOW_WORDS)}-{gen.pick(_FLOW_SUFFIXES)}"
        if name in names:
            name = f"{name}-{i}"
        names.add(name)
        created, updated = gen.stamps()
        flows.append(
            {
                "id": gen.uuid(),
                "created": format_timestamp(created),
                "updated": format_timestamp(updated),
                "name": name,
                "tags": gen.tags(),
            }
        )
    return flows


def _deployments(gen: _Gen, count: int, flows: list[JsonDict]) -> list[JsonDict]:
    used: set[tuple[str, str]] = set()
    out: list[JsonDict] = []
    # the first half of the flows get the deployments: the rest never have one
    owners = flows[: max(1, (len(flows) + 1) // 2)]
    for i in range(count):
        flow_id = gen.pick(owners)["id"]
        name = gen.pick(_DEPLOYMENT_NAMES)
        if (flow_id, name) in used:
            name = f"{name}-{i}"
        used.add((flow_id, name))
        created, updated = gen.stamps()
        out.append(
            {
                "id": gen.uuid(),
                "created": format_timestamp(created),
                "updated": format_timestamp(updated),
                "name": name,
                "flow_id": flow_id,
                "tags": gen.tags(),
                "paused": gen.chance(0.3),
                "work_queue_name": None if gen.chance(0.2) else gen.pick(_WORK_QUEUES),
                "concurrency_limit": None if gen.chance(0.6) else gen.rng.randint(0, 5),
            }
        )
    return out


def _flow_runs(
    gen: _Gen,
    count: int,
    flows: list[JsonDict],
    deployments: list[JsonDict],
    dangling_flows: list[str],
    dangling_deployments: list[str],
) -> list[JsonDict]:
    rng = gen.rng
    by_flow: dict[str, list[str]] = {}
    for dep in deployments:
        by_flow.setdefault(dep["flow_id"], []).append(dep["id"])
    automation_ids = [gen.uuid() for _ in range(3)]
    used_idem: set[tuple[str, str]] = set()
    runs: list[JsonDict] = []
    for _ in range(count):
        flow_id = gen.pick(dangling_flows) if dangling_flows and gen.chance(0.03) else None
        if flow_id is None:
            flow_id = gen.pick(flows)["id"]
        deployment_id: str | None = None
        roll = rng.random()
        if roll < 0.6 and flow_id in by_flow:
            deployment_id = gen.pick(by_flow[flow_id])
        elif roll < 0.64 and deployments:
            deployment_id = gen.pick(deployments)["id"]  # a deployment of another flow
        elif roll < 0.67 and dangling_deployments:
            deployment_id = gen.pick(dangling_deployments)
        state_type, state_name = gen.state()
        created, updated = gen.stamps()
        expected, start, end = _run_times(gen, created, state_type)
        next_scheduled: int | None = None
        scheduled = state_type == "SCHEDULED" or (state_type is not None and gen.chance(0.1))
        if scheduled and gen.chance(0.85):
            next_scheduled = expected if expected is not None else gen.later(created)
        idem: str | None = None
        if gen.chance(0.5):
            candidate = gen.pick(_IDEMPOTENCY)
            if (flow_id, candidate) not in used_idem:
                used_idem.add((flow_id, candidate))
                idem = candidate
        created_by: JsonDict | None = None
        if gen.chance(0.45):
            kind = gen.pick(_CREATOR_TYPES)
            creator_id: str | None
            if kind.upper() == "DEPLOYMENT" and deployment_id is not None:
                creator_id = deployment_id
            elif gen.chance(0.1):
                creator_id = None
            else:
                creator_id = gen.pick(automation_ids)
            created_by = {
                "id": creator_id,
                "type": None if gen.chance(0.05) else kind,
                "display_value": gen.pick(_DEPLOYMENT_NAMES),
            }
        runs.append(
            {
                "id": gen.uuid(),
                "created": format_timestamp(created),
                "updated": format_timestamp(updated),
                "name": f"{gen.pick(_RUN_ADJECTIVES)}-{gen.pick(_RUN_NOUNS)}",
                "flow_id": flow_id,
                "deployment_id": deployment_id,
                "work_queue_name": None if gen.chance(0.3) else gen.pick(_WORK_QUEUES),
                "flow_version": None if gen.chance(0.3) else gen.pick(_FLOW_VERSIONS),
                "tags": gen.tags(),
                "state_type": state_type,
                "state_name": state_name,
                "start_time": _ts(start),
                "end_time": _ts(end),
                "expected_start_time": _ts(expected),
                "next_scheduled_start_time": _ts(next_scheduled),
                "parent_task_run_id": None,
                "idempotency_key": idem,
                "created_by": created_by,
            }
        )
    return runs


def _task_runs(
    gen: _Gen, count: int, flow_runs: list[JsonDict], dangling_runs: list[str]
) -> list[JsonDict]:
    rng = gen.rng
    out: list[JsonDict] = []
    for _ in range(count):
        roll = rng.random()
        flow_run_id: str | None
        if roll < 0.06:
            flow_run_id = None
        elif roll < 0.1 and dangling_runs:
            flow_run_id = gen.pick(dangling_runs)
        else:
            flow_run_id = gen.pick(flow_runs)["id"] if flow_runs else None
        state_type, state_name = gen.state()
        created, updated = gen.stamps()
        expected, start, end = _run_times(gen, created, state_type)
        out.append(
            {
                "id": gen.uuid(),
                "created": format_timestamp(created),
                "updated": format_timestamp(updated),
                "name": f"{gen.pick(_TASK_NAMES)}-{rng.randrange(4)}",
                "flow_run_id": flow_run_id,
                "tags": gen.tags(0.4),
                "state_type": state_type,
                "state_name": state_name,
                "start_time": _ts(start),
                "end_time": _ts(end),
                "expected_start_time": _ts(expected),
            }
        )
    return out


def _link_subflows(
    gen: _Gen, flow_runs: list[JsonDict], task_runs: list[JsonDict], dangling_tasks: list[str]
) -> None:
    """Make some flow runs subflows of a task run of *another* flow run."""
    parents = [t for t in task_runs if t["flow_run_id"] is not None]
    taken: set[str] = set()
    for run in flow_runs:
        roll = gen.rng.random()
        if roll < 0.2 and parents:
            parent = gen.pick(parents)
            if parent["flow_run_id"] != run["id"] and parent["id"] not in taken:
                taken.add(parent["id"])
                run["parent_task_run_id"] = parent["id"]
        elif roll < 0.24 and dangling_tasks:
            run["parent_task_run_id"] = gen.pick(dangling_tasks)


def _artifact_data(gen: _Gen, kind: str | None) -> Any:
    rng = gen.rng
    roll = rng.random()
    if roll < 0.08:
        return None
    if kind == "progress" or roll < 0.2:
        return round(rng.random() * 100, 2) if rng.random() < 0.7 else rng.randrange(100)
    if kind in ("markdown", "link", "image") or roll < 0.45:
        return gen.pick(_DESCRIPTIONS) + f" #{rng.randrange(1000)}"
    if kind == "table" or roll < 0.7:
        return [{"a": rng.randrange(10), "b": gen.pick(_META_VALUES)} for _ in range(2)]
    return {"storage_key": f"s3://bucket/{rng.randrange(10_000)}", "nested": {"x": [1, None]}}


def _artifact_keys(gen: _Gen, artifacts: int) -> list[str]:
    distinct = max(len(_SPECIAL_KEYS), artifacts // 6)
    keys = list(_SPECIAL_KEYS)
    i = 0
    while len(keys) < distinct:
        keys.append(f"{gen.pick(_KEY_STEMS)}-{i}")
        i += 1
    return keys


def _artifacts(
    gen: _Gen,
    count: int,
    keys: list[str],
    flow_runs: list[JsonDict],
    tasks_by_run: dict[str, list[str]],
    task_runs: list[JsonDict],
    dangling_runs: list[str],
    dangling_tasks: list[str],
) -> list[JsonDict]:
    rng = gen.rng
    out: list[JsonDict] = []
    n_keys = len(keys)
    for _ in range(count):
        key: str | None = None if rng.random() < 0.3 else keys[int(rng.random() ** 1.5 * n_keys)]
        kind = gen.pick(ARTIFACT_TYPES)
        roll = rng.random()
        flow_run_id: str | None
        if roll < 0.2 or not flow_runs:
            flow_run_id = None
        elif roll < 0.27 and dangling_runs:
            flow_run_id = gen.pick(dangling_runs)
        else:
            flow_run_id = gen.pick(flow_runs)["id"]
        roll = rng.random()
        task_run_id: str | None = None
        if roll < 0.05 and dangling_tasks:
            task_run_id = gen.pick(dangling_tasks)
        elif roll < 0.55:
            own = tasks_by_run.get(flow_run_id) if flow_run_id is not None else None
            if own:
                task_run_id = gen.pick(own)
            elif roll < 0.12 and task_runs:
                task_run_id = gen.pick(task_runs)["id"]  # inconsistent on purpose
        created = gen.moment()
        metadata: JsonDict | None = None
        if rng.random() < 0.4:
            metadata = {
                gen.pick(_META_KEYS): gen.pick(_META_VALUES) for _ in range(rng.randint(0, 2))
            }
        out.append(
            {
                "id": gen.uuid(),
                "created": format_timestamp(created),
                "updated": format_timestamp(gen.later(created)),
                "key": key,
                "type": kind,
                "description": None if rng.random() < 0.3 else gen.pick(_DESCRIPTIONS),
                "data": _artifact_data(gen, kind),
                "metadata_": metadata,
                "flow_run_id": flow_run_id,
                "task_run_id": task_run_id,
            }
        )
    return out


def generate_dataset(seed: int, scale: DatasetScale | None = None) -> Dataset:
    """Generate the final state of a system, deterministically from ``seed``.

    Guarantees: flow names are unique, ``(flow_id, name)`` of deployments and
    ``(flow_id, idempotency_key)`` of flow runs are unique (Prefect's schema enforces
    those); dangling references point at ids found in :attr:`Dataset.deleted`.
    """
    scale = scale or DatasetScale()
    gen = _Gen(seed)

    all_flows = _flows(gen, scale.flows + max(1, scale.flows // 10))
    deleted_flows = all_flows[scale.flows :]
    flows = all_flows[: scale.flows]
    n_deleted_deps = max(1, scale.deployments // 10)
    all_deps = _deployments(gen, scale.deployments + n_deleted_deps, flows + deleted_flows)
    # deleted deployments are drawn from the end so survivors keep their flow mix
    deployments, deleted_deps = all_deps[: scale.deployments], all_deps[scale.deployments :]
    # deployments of deleted flows would have been deleted with them (cascade)
    dead_flow_ids = {f["id"] for f in deleted_flows}
    cascaded = [d for d in deployments if d["flow_id"] in dead_flow_ids]
    deployments = [d for d in deployments if d["flow_id"] not in dead_flow_ids]
    deleted_deps.extend(cascaded)

    n_deleted_runs = max(1, scale.flow_runs // 20)
    all_runs = _flow_runs(
        gen,
        scale.flow_runs + n_deleted_runs,
        flows,
        deployments,
        [f["id"] for f in deleted_flows],
        [d["id"] for d in deleted_deps],
    )
    flow_runs, deleted_runs = all_runs[: scale.flow_runs], all_runs[scale.flow_runs :]
    dangling_runs = [r["id"] for r in deleted_runs]

    n_deleted_tasks = max(1, scale.task_runs // 20)
    all_tasks = _task_runs(gen, scale.task_runs + n_deleted_tasks, flow_runs, dangling_runs)
    task_runs, deleted_tasks = all_tasks[: scale.task_runs], all_tasks[scale.task_runs :]
    dangling_tasks = [t["id"] for t in deleted_tasks]
    _link_subflows(gen, flow_runs, task_runs, dangling_tasks)

    tasks_by_run: dict[str, list[str]] = {}
    for task in task_runs:
        if task["flow_run_id"] is not None:
            tasks_by_run.setdefault(task["flow_run_id"], []).append(task["id"])

    keys = _artifact_keys(gen, scale.artifacts)
    n_deleted_artifacts = max(1, scale.artifacts // 20)
    all_artifacts = _artifacts(
        gen,
        scale.artifacts + n_deleted_artifacts,
        keys,
        flow_runs,
        tasks_by_run,
        task_runs,
        dangling_runs,
        dangling_tasks,
    )
    # realistic reports, tables, links, metadata (datagen/content.py) on a share of them,
    # from a stream of their own: every other field stays what the seed gave before
    realistic_content(random.Random(f"content-{seed}"), all_artifacts, REALISTIC_SHARE)
    artifacts = all_artifacts[: scale.artifacts]
    deleted_artifacts = all_artifacts[scale.artifacts :]

    return Dataset(
        seed=seed,
        scale=scale,
        flows=flows,
        deployments=deployments,
        flow_runs=flow_runs,
        task_runs=task_runs,
        artifacts=artifacts,
        deleted={
            "flow": deleted_flows,
            "deployment": deleted_deps,
            "flow_run": deleted_runs,
            "task_run": deleted_tasks,
            "artifact": deleted_artifacts,
        },
    )


# --- (de)serialisation ---------------------------------------------------------------


def dataset_to_dict(dataset: Dataset) -> JsonDict:
    """A JSON-able dict holding the whole dataset."""
    return {
        "seed": dataset.seed,
        "scale": {
            "flows": dataset.scale.flows,
            "deployments": dataset.scale.deployments,
            "flow_runs": dataset.scale.flow_runs,
            "task_runs": dataset.scale.task_runs,
            "artifacts": dataset.scale.artifacts,
        },
        "flows": dataset.flows,
        "deployments": dataset.deployments,
        "flow_runs": dataset.flow_runs,
        "task_runs": dataset.task_runs,
        "artifacts": dataset.artifacts,
        "deleted": dataset.deleted,
    }


def dataset_from_dict(raw: JsonDict) -> Dataset:
    """Inverse of :func:`dataset_to_dict`."""
    return Dataset(
        seed=int(raw["seed"]),
        scale=DatasetScale(**raw["scale"]),
        flows=list(raw["flows"]),
        deployments=list(raw["deployments"]),
        flow_runs=list(raw["flow_runs"]),
        task_runs=list(raw["task_runs"]),
        artifacts=list(raw["artifacts"]),
        deleted={name: list(raw["deleted"].get(name, [])) for name in ENTITY_NAMES},
    )


def dataset_to_json(dataset: Dataset) -> str:
    return json.dumps(dataset_to_dict(dataset), ensure_ascii=False, separators=(",", ":"))


def dataset_from_json(text: str | bytes) -> Dataset:
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("a dataset document must be a JSON object")
    return dataset_from_dict(raw)


def iter_entities(dataset: Dataset) -> Iterator[tuple[str, JsonDict]]:
    """Every surviving ``(entity name, snapshot)`` in dependency order."""
    for name in ENTITY_NAMES:
        for snapshot in dataset.entities(name):
            yield name, snapshot

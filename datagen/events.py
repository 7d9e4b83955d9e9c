"""Turn a generated dataset into a stream of v1 events (demo, tests, benchmarks).

The stream's final state is the dataset: every surviving entity's last event is
an upsert of its snapshot; deleted entities get an upsert then a delete (or a
tombstone). Optional noise makes it hard: earlier versions with different
content, exact duplicates, and stale versions re-sent after the newest.
Per-key order is kept (as Kafka keeps it); keys of different entities are
interleaved at random across topics.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from datagen.dataset import Dataset, DatasetScale, generate_dataset
from services.contract import ENTITIES, encode_event

Record = tuple[str, bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class Noise:
    """How much disorder to inject (probabilities per entity)."""

    earlier_versions: float = 0.0
    duplicates: float = 0.0
    stale_after: float = 0.0
    tombstone_deletes: float = 0.5
    #: earlier versions (1 to 3) that point elsewhere: another flow run, task run, key,
    #: `created`, parent task run, flow or deployment (relationship changes)
    moves: float = 0.0
    #: tombstones of ids that never existed, per entity snapshot
    phantom_tombstones: float = 0.0


NONE = Noise()
HARD = Noise(earlier_versions=0.3, duplicates=0.2, stale_after=0.2)
MOVING = Noise(
    earlier_versions=0.3,
    duplicates=0.2,
    stale_after=0.2,
    moves=0.5,
    phantom_tombstones=0.05,
)
"""HARD plus relationship changes and tombstones of unknown ids."""

_FAR_CREATED = ("0001-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999999Z")


@dataclass(frozen=True, slots=True)
class _Pools:
    """Ids an earlier version may point at instead."""

    flows: list[str]
    deployments: list[str]
    flow_runs: list[str]
    task_runs: list[str]
    keys: list[str]

    @classmethod
    def of(cls, dataset: Dataset) -> _Pools:
        def ids(entity: str) -> list[str]:
            alive = [d["id"] for d in dataset.entities(entity)]
            return alive + [d["id"] for d in dataset.deleted.get(entity, [])]

        keys = sorted({a["key"] for a in dataset.artifacts if a.get("key")})
        return cls(ids("flow"), ids("deployment"), ids("flow_run"), ids("task_run"), keys)


def _moved(entity: str, data: dict[str, Any], rng: random.Random, pools: _Pools) -> dict[str, Any]:
    other = dict(data)

    def maybe(pool: list[str]) -> str | None:
        return rng.choice(pool) if pool and rng.random() < 0.85 else None

    if entity == "artifact":
        other["flow_run_id"] = maybe(pools.flow_runs)
        other["task_run_id"] = maybe(pools.task_runs)
        other["key"] = rng.choice([*pools.keys[:20], None, "moved-key"])
        if rng.random() < 0.5:
            other["created"] = rng.choice(_FAR_CREATED)
    elif entity == "flow_run":
        other["parent_task_run_id"] = maybe(pools.task_runs)
        other["flow_id"] = rng.choice(pools.flows) if pools.flows else data["flow_id"]
        other["deployment_id"] = maybe(pools.deployments)
    elif entity == "task_run":
        other["flow_run_id"] = maybe(pools.flow_runs)
    elif entity == "deployment":
        other["flow_id"] = rng.choice(pools.flows) if pools.flows else data["flow_id"]
    else:
        other["name"] = "moved-" + str(data.get("name"))
    return other


def _mutate(entity: str, data: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    other = dict(data)
    if entity == "artifact":
        other["type"] = rng.choice(["stale", "table", None])
        other["key"] = rng.choice([None, "stale-key", data.get("key")])
    elif entity in ("flow_run", "task_run"):
        other["state_type"] = "PENDING"
        other["tags"] = ["stale"]
    else:
        other["name"] = "stale-" + str(data.get("name"))
    return other


def _entity_stream(
    entity: str,
    data: dict[str, Any],
    deleted: bool,
    rng: random.Random,
    noise: Noise,
    version: int,
    pools: _Pools | None = None,
) -> list[Record]:
    key = str(data["id"]).encode()
    out: list[Record] = []

    def emit(op: str, version: int, payload: dict[str, Any] | None) -> None:
        out.append((entity, key, encode_event(entity, str(data["id"]), op, version, payload)))

    if noise.moves and pools is not None and rng.random() < noise.moves:
        for step in range(rng.randint(1, 3), 0, -1):
            emit("upsert", version - 2 - step, _moved(entity, data, rng, pools))
            if rng.random() < 0.2:  # deleted and re-created on the way
                out.append((entity, key, None))
    if rng.random() < noise.earlier_versions:
        emit("upsert", version - 2, _mutate(entity, data, rng))
    emit("upsert", version, data)
    if rng.random() < noise.duplicates:
        emit("upsert", version, data)
    if deleted:
        if rng.random() < noise.tombstone_deletes:
            out.append((entity, key, None))
        else:
            emit("delete", version + 1, None)
    if rng.random() < noise.stale_after:
        emit("upsert", version - 1, _mutate(entity, data, rng))
    return out


def dataset_records(dataset: Dataset, seed: int = 0, noise: Noise = NONE) -> list[Record]:
    """All records of the dataset, interleaved at random with per-key order kept."""
    rng = random.Random(seed)
    pools = _Pools.of(dataset) if noise.moves else None
    streams: list[list[Record]] = []
    for entity in ENTITIES:
        for data in dataset.entities(entity):
            streams.append(
                _entity_stream(entity, data, False, rng, noise, 10 + rng.randrange(1000), pools)
            )
            if rng.random() < noise.phantom_tombstones:
                # a version-5 id: never one of the dataset's (version-4, seeded) ids
                phantom = str(uuid.uuid5(uuid.NAMESPACE_URL, f"phantom:{data['id']}")).encode()
                streams.append([(entity, phantom, None)])
        for data in dataset.deleted.get(entity, []):
            streams.append(
                _entity_stream(entity, data, True, rng, noise, 10 + rng.randrange(1000), pools)
            )
    return list(_interleave(streams, rng))


def _interleave(streams: list[list[Record]], rng: random.Random) -> Iterator[Record]:
    positions = [0] * len(streams)
    live = [i for i, s in enumerate(streams) if s]
    while live:
        pick = rng.randrange(len(live))
        index = live[pick]
        yield streams[index][positions[index]]
        positions[index] += 1
        if positions[index] == len(streams[index]):
            live[pick] = live[-1]
            live.pop()


def dataset_events(seed: int, artifacts: int) -> list[Record]:
    """The demo stream: a seeded dataset of `artifacts` artifacts, in random order."""
    dataset = generate_dataset(seed, DatasetScale.for_artifacts(artifacts))
    return dataset_records(dataset, seed)


def dependency_order(records: list[Record]) -> list[Record]:
    """The same records grouped by entity in dependency order (as a backfill sends them).

    Flows, then deployments, flow runs, task runs and artifacts; the relative order
    of records of one entity type (and so of each key) is kept.
    """
    rank = {entity: i for i, entity in enumerate(ENTITIES)}
    return sorted(records, key=lambda record: rank[record[0]])


def records_jsonl(records: list[Record]) -> str:
    """The records as JSON Lines that `artifact-search produce FILE` publishes back unchanged:
    each value's envelope on its own line, a tombstone as `{"tombstone": true, ...}`."""
    lines = []
    for entity, key, value in records:
        if value is None:
            lines.append(
                json.dumps({"entity": entity, "entity_id": key.decode(), "tombstone": True})
            )
        else:
            lines.append(value.decode())
    return "\n".join(lines) + "\n"

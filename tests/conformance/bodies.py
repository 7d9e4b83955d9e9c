"""Seeded random request bodies for the four artifact search endpoints.

``generate_bodies(seed, dataset, n, endpoint)`` returns ``n`` JSON bodies (plain
dicts, exactly what a client would POST). The first bodies walk every
(filter, field, operator) combination once, so ``n >= coverage_size(endpoint)``
guarantees that every field and operator of the artifact, collection, flow run,
task run, flow and deployment filters appears; the rest are random combinations
(``and_``/``or_``, empty lists, empty sub-filters, explicit nulls, sorts, limits
and offsets). Values are drawn from the dataset (ids, names, tags, keys, exact
boundary timestamps, dangling ids) and from a few values that match nothing.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta, timezone
from typing import Any, Final

from datagen.dataset import (
    ARTIFACT_TYPES,
    STATE_NAMES,
    STATE_TYPES,
    Dataset,
    JsonDict,
    format_timestamp,
    parse_timestamp,
    timestamp_us,
)

ENDPOINTS: Final = (
    "/artifacts/filter",
    "/artifacts/count",
    "/artifacts/latest/filter",
    "/artifacts/latest/count",
)
SORTS: Final = ("CREATED_DESC", "UPDATED_DESC", "ID_DESC", "KEY_DESC", "KEY_ASC")
MAX_LIMIT: Final = 200

# A spec maps a field to {operator: value kind}; a nested dict is a sub-filter.
Spec = dict[str, Any]

_ARTIFACT: Final[Spec] = {
    "id": {"any_": "artifact_ids"},
    "key": {"any_": "keys", "like_": "like:keys", "exists_": "bool"},
    "flow_run_id": {"any_": "flow_run_ids"},
    "task_run_id": {"any_": "task_run_ids"},
    "type": {"any_": "types", "not_any_": "types"},
}
_COLLECTION: Final[Spec] = {
    "latest_id": {"any_": "artifact_ids"},
    "key": {"any_": "keys", "like_": "like:keys", "exists_": "bool"},
    "flow_run_id": {"any_": "flow_run_ids"},
    "task_run_id": {"any_": "task_run_ids"},
    "type": {"any_": "types", "not_any_": "types"},
}
_FLOW_RUN: Final[Spec] = {
    "id": {"any_": "flow_run_ids", "not_any_": "flow_run_ids"},
    "name": {"any_": "flow_run_names", "like_": "like:flow_run_names"},
    "tags": {"operator": "operator", "all_": "tags", "any_": "tags", "is_null_": "bool"},
    "deployment_id": {"operator": "operator", "any_": "deployment_ids", "is_null_": "bool"},
    "work_queue_name": {"operator": "operator", "any_": "work_queues", "is_null_": "bool"},
    "state": {
        "operator": "operator",
        "type": {"any_": "state_types", "not_any_": "state_types"},
        "name": {"any_": "state_names", "not_any_": "state_names"},
    },
    "flow_version": {"any_": "flow_versions"},
    "start_time": {
        "before_": "time:fr_start",
        "after_": "time:fr_start",
        "is_null_": "bool",
    },
    "end_time": {"before_": "time:fr_end", "after_": "time:fr_end", "is_null_": "bool"},
    "expected_start_time": {"before_": "time:fr_expected", "after_": "time:fr_expected"},
    "next_scheduled_start_time": {"before_": "time:fr_next", "after_": "time:fr_next"},
    "parent_flow_run_id": {"operator": "operator", "any_": "flow_run_ids"},
    "parent_task_run_id": {"operator": "operator", "any_": "task_run_ids", "is_null_": "bool"},
    "idempotency_key": {"any_": "idempotency_keys", "not_any_": "idempotency_keys"},
    "created_by": {
        "operator": "operator",
        "id_": "creator_ids",
        "type_": "creator_types",
        "is_null_": "bool",
    },
}
_TASK_RUN: Final[Spec] = {
    "id": {"any_": "task_run_ids"},
    "name": {"any_": "task_run_names", "like_": "like:task_run_names"},
    "tags": {"operator": "operator", "all_": "tags", "is_null_": "bool"},
    "state": {
        "operator": "operator",
        "type": {"any_": "state_types"},
        "name": {"any_": "state_names"},
    },
    "start_time": {"before_": "time:tr_start", "after_": "time:tr_start", "is_null_": "bool"},
    "end_time": {"before_": "time:tr_end", "after_": "time:tr_end", "is_null_": "bool"},
    "expected_start_time": {"before_": "time:tr_expected", "after_": "time:tr_expected"},
    "subflow_runs": {"exists_": "bool"},
    "flow_run_id": {"operator": "operator", "any_": "flow_run_ids", "is_null_": "bool"},
}
_FLOW: Final[Spec] = {
    "id": {"any_": "flow_ids", "not_any_": "flow_ids"},
    "deployment": {"operator": "operator", "is_null_": "bool"},
    "name": {"any_": "flow_names", "like_": "like:flow_names"},
    "tags": {"operator": "operator", "all_": "tags", "is_null_": "bool"},
}
_DEPLOYMENT: Final[Spec] = {
    "id": {"any_": "deployment_ids", "not_any_": "deployment_ids"},
    "name": {"any_": "deployment_names", "like_": "like:deployment_names"},
    "flow_or_deployment_name": {"like_": "like:flow_or_deployment_names"},
    "paused": {"eq_": "bool"},
    "tags": {"operator": "operator", "all_": "tags", "any_": "tags", "is_null_": "bool"},
    "work_queue_name": {"any_": "work_queues"},
    "concurrency_limit": {"ge_": "int", "le_": "int", "is_null_": "bool"},
}

#: Top-level body key -> filter spec, per kind of endpoint.
FILTER_SPECS: Final[dict[str, Spec]] = {
    "flow_runs": _FLOW_RUN,
    "task_runs": _TASK_RUN,
    "flows": _FLOW,
    "deployments": _DEPLOYMENT,
}

_NOMATCH_STRINGS: Final = ("no-such-value", "NOMATCH", "ü-none", "")
_LIKE_SPECIALS: Final = (
    "%",
    "_",
    "\\",
    "\\\\",
    "%%",
    "a%b",
    "100%",
    "_score",
    "Ü",
    "ü",
    "é",
    "REPORT",
    "rEpOrT",
    "-",
    " ",
    "ключ",
    "日本",
    "\\%",
    "\\_",
    "x\\y",
)
_FAR_TIMES: Final = ("1970-01-01T00:00:00Z", "2100-01-01T00:00:00Z", "2024-01-31T12:00:00Z")


def _artifact_spec(endpoint: str) -> Spec:
    return _COLLECTION if "/latest/" in endpoint else _ARTIFACT


def _paths(spec: Spec, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Every (path of field names ending in an operator, value kind) of a spec."""
    out: list[tuple[tuple[str, ...], str]] = []
    for name, sub in spec.items():
        if isinstance(sub, dict):
            out.extend(_paths(sub, (*prefix, name)))
        else:
            out.append(((*prefix, name), sub))
    return out


class _Pools:
    """Values drawn from the dataset, by value kind."""

    def __init__(self, dataset: Dataset) -> None:
        d = dataset
        dead = d.deleted
        artifacts = d.artifacts
        collections = d.collections()
        self.lists: dict[str, list[Any]] = {
            "artifact_ids": [a["id"] for a in artifacts]
            + [c["latest_id"] for c in collections]
            + [a["id"] for a in dead.get("artifact", [])],
            "flow_run_ids": [r["id"] for r in d.flow_runs]
            + [r["id"] for r in dead.get("flow_run", [])],
            "task_run_ids": [t["id"] for t in d.task_runs]
            + [t["id"] for t in dead.get("task_run", [])],
            "flow_ids": [f["id"] for f in d.flows] + [f["id"] for f in dead.get("flow", [])],
            "deployment_ids": [x["id"] for x in d.deployments]
            + [x["id"] for x in dead.get("deployment", [])],
            "keys": sorted({a["key"] for a in artifacts if a.get("key") is not None}),
            "types": [t for t in ARTIFACT_TYPES if t is not None] + ["custom", "Markdown"],
            "flow_run_names": sorted({r["name"] for r in d.flow_runs}),
            "task_run_names": sorted({t["name"] for t in d.task_runs}),
            "flow_names": sorted({f["name"] for f in d.flows}),
            "deployment_names": sorted({x["name"] for x in d.deployments}),
            "tags": sorted(
                {
                    t
                    for group in (d.flows, d.deployments, d.flow_runs, d.task_runs)
                    for e in group
                    for t in e.get("tags") or []
                }
            ),
            "work_queues": sorted(
                {
                    e["work_queue_name"]
                    for e in (*d.flow_runs, *d.deployments)
                    if e.get("work_queue_name") is not None
                }
            ),
            "state_types": list(STATE_TYPES),
            "state_names": sorted({n for names in STATE_NAMES.values() for n in names}),
            "flow_versions": sorted(
                {r["flow_version"] for r in d.flow_runs if r.get("flow_version") is not None}
            ),
            "idempotency_keys": sorted(
                {r["idempotency_key"] for r in d.flow_runs if r.get("idempotency_key")}
            ),
            "creator_ids": sorted(
                {
                    r["created_by"]["id"]
                    for r in d.flow_runs
                    if r.get("created_by") and r["created_by"].get("id")
                }
            ),
            "creator_types": sorted(
                {
                    r["created_by"]["type"]
                    for r in d.flow_runs
                    if r.get("created_by") and r["created_by"].get("type")
                }
            ),
        }
        self.lists["flow_or_deployment_names"] = (
            self.lists["flow_names"] + self.lists["deployment_names"]
        )
        self.times: dict[str, list[str]] = {
            "fr_start": [
                v
                for r in d.flow_runs
                for v in (r.get("start_time"), r.get("expected_start_time"))
                if v is not None
            ],
            "fr_end": [r["end_time"] for r in d.flow_runs if r.get("end_time")],
            "fr_expected": [
                r["expected_start_time"] for r in d.flow_runs if r.get("expected_start_time")
            ],
            "fr_next": [
                r["next_scheduled_start_time"]
                for r in d.flow_runs
                if r.get("next_scheduled_start_time")
            ],
            "tr_start": [t["start_time"] for t in d.task_runs if t.get("start_time")],
            "tr_end": [t["end_time"] for t in d.task_runs if t.get("end_time")],
            "tr_expected": [
                t["expected_start_time"] for t in d.task_runs if t.get("expected_start_time")
            ],
        }
        limits = [x.get("concurrency_limit") for x in d.deployments]
        self.ints = sorted({v for v in limits if isinstance(v, int)}) or [0]
        self.total = {
            "artifacts": len(artifacts),
            "collections": len(collections),
        }


class _BodyGen:
    def __init__(self, seed: int, dataset: Dataset, endpoint: str) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        self.rng = random.Random(seed)
        self.endpoint = endpoint
        self.pools = _Pools(dataset)
        self.specs: dict[str, Spec] = {"artifacts": _artifact_spec(endpoint), **FILTER_SPECS}
        self.is_list = endpoint.endswith("/filter")
        self.is_latest = "/latest/" in endpoint

    # -- values --

    def uuid_nomatch(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]

    def value_list(self, pool: Sequence[Any], nomatch: Callable[[], Any]) -> list[Any]:
        rng = self.rng
        size = rng.choice((0, 1, 1, 1, 2, 2, 2, 3, 3, 5, 8))
        out: list[Any] = []
        for _ in range(size):
            out.append(self.pick(pool) if pool and rng.random() < 0.92 else nomatch())
        return out

    def like(self, pool: Sequence[str]) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25 or not pool:
            return str(self.pick(_LIKE_SPECIALS))
        value = str(self.pick(pool))
        if roll < 0.35:
            return value
        if roll < 0.45:
            return "no%such_thing"
        start = rng.randrange(len(value) + 1)
        end = rng.randrange(start, len(value) + 1)
        piece = value[start:end]
        mode = rng.random()
        if mode < 0.3:
            piece = piece.upper()
        elif mode < 0.5:
            piece = piece.swapcase()
        elif mode < 0.6:
            piece = piece.lower()
        return piece

    def time(self, pool: Sequence[str]) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.08 or not pool:
            return str(self.pick(_FAR_TIMES))
        value = str(self.pick(pool))
        us = timestamp_us(value)
        if roll < 0.55:
            return value  # the exact boundary
        if roll < 0.7:
            return format_timestamp(us + rng.choice((-1, 1)))
        if roll < 0.8:
            return value.replace("Z", "+00:00")
        if roll < 0.88:
            zone = timezone(timedelta(hours=rng.choice((-5, 2, 9))))
            shifted = parse_timestamp(value).astimezone(zone)
            return shifted.isoformat()
        if roll < 0.95:
            return format_timestamp(us + rng.randrange(-86_400_000_000, 86_400_000_000))
        return format_timestamp(us - us % 1_000_000)

    def value(self, kind: str) -> Any:
        rng = self.rng
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "operator":
            return "or_" if rng.random() < 0.5 else "and_"
        if kind == "int":
            return self.pick([*self.pools.ints, -1, 0, 1, 3, 100])
        if kind.startswith("like:"):
            return self.like(self.pools.lists[kind[5:]])
        if kind.startswith("time:"):
            return self.time(self.pools.times[kind[5:]])
        pool = self.pools.lists[kind]
        if kind == "state_types":  # an unknown state type is a 422, not a filter
            return self.value_list(pool, lambda: self.pick(STATE_TYPES))
        if kind.endswith("_ids"):
            return self.value_list(pool, self.uuid_nomatch)
        return self.value_list(pool, lambda: self.pick(_NOMATCH_STRINGS))

    # -- filters --

    def subfilter(self, spec: Spec, depth: int = 0) -> JsonDict:
        rng = self.rng
        names = list(spec)
        if rng.random() < 0.08:
            return {}
        count = rng.choice((1, 1, 1, 1, 2, 2, 3))
        out: JsonDict = {}
        for name in rng.sample(names, min(count, len(names))):
            sub = spec[name]
            if isinstance(sub, dict):
                if rng.random() < 0.04:
                    out[name] = None
                else:
                    out[name] = self.subfilter(sub, depth + 1)
            else:
                nullable = sub != "operator"  # "operator": null is a 422
                out[name] = None if nullable and rng.random() < 0.03 else self.value(sub)
        if depth == 0 and "operator" not in spec and rng.random() < 0.35:
            out["operator"] = self.value("operator")
        return out

    def paging(self, body: JsonDict) -> None:
        if not self.is_list:
            return
        rng = self.rng
        if rng.random() < 0.75:
            body["sort"] = self.pick(SORTS)
        roll = rng.random()
        if roll < 0.1:
            body["limit"] = 0
        elif roll < 0.5:
            body["limit"] = rng.randint(1, 10)
        elif roll < 0.6:
            body["limit"] = MAX_LIMIT
        elif roll < 0.65:
            body["limit"] = None
        total = self.pools.total["collections" if self.is_latest else "artifacts"]
        roll = rng.random()
        if roll < 0.15:
            body["offset"] = 0
        elif roll < 0.4:
            body["offset"] = rng.randint(1, 12)
        elif roll < 0.5:
            body["offset"] = total + rng.randint(0, 3)
        elif roll < 0.55:
            body["offset"] = max(0, total - rng.randint(1, 5))

    def random_body(self) -> JsonDict:
        rng = self.rng
        body: JsonDict = {}
        for top, spec in self.specs.items():
            if rng.random() < 0.25:
                roll = rng.random()
                if roll < 0.07:
                    body[top] = {}
                elif roll < 0.1:
                    body[top] = None
                else:
                    sub = self.subfilter(spec)
                    if rng.random() < 0.2:
                        sub["operator"] = self.value("operator")
                    body[top] = sub
        self.paging(body)
        return body

    def coverage_bodies(self) -> list[JsonDict]:
        """One body per (filter, field path, operator), plus each sort and operator."""
        out: list[JsonDict] = []
        for top, spec in self.specs.items():
            for path, kind in _paths(spec):
                node: JsonDict = {}
                body: JsonDict = {top: node}
                for name in path[:-1]:
                    child: JsonDict = {}
                    node[name] = child
                    node = child
                node[path[-1]] = self.value(kind)
                out.append(body)
            for op in ("and_", "or_"):
                fields = [n for n, s in spec.items() if isinstance(s, dict)][:2]
                out.append(
                    {top: {"operator": op, **{f: self.subfilter(spec[f], 1) for f in fields}}}
                )
        if self.is_list:
            for sort in SORTS:
                out.append({"sort": sort})
                out.append({"sort": sort, "limit": 3, "offset": 2})
        return out


def coverage_size(dataset: Dataset, endpoint: str) -> int:
    """How many leading bodies of :func:`generate_bodies` make up the coverage walk."""
    return len(_BodyGen(0, dataset, endpoint).coverage_bodies())


def generate_bodies(seed: int, dataset: Dataset, n: int, endpoint: str) -> list[JsonDict]:
    """``n`` request bodies for ``endpoint`` (one of :data:`ENDPOINTS`), seeded."""
    gen = _BodyGen(seed, dataset, endpoint)
    bodies = gen.coverage_bodies()[:n]
    while len(bodies) < n:
        bodies.append(gen.random_body())
    return bodies


#: Bodies Prefect rejects with 422 (for the error-shape conformance tests).
INVALID_BODIES: Final[tuple[JsonDict, ...]] = (
    {"sort": "BAD"},
    {"sort": "id_desc"},
    {"limit": -1},
    {"limit": MAX_LIMIT + 1},
    {"limit": 1.5},
    {"offset": -1},
    {"artifacts": {"nope": 1}},
    {"artifacts": {"operator": None}},
    {"artifacts": {"operator": "xor"}},
    {"artifacts": {"key": {"any_": "report"}}},
    {"artifacts": {"id": {"any_": ["not-a-uuid"]}}},
    {"flow_runs": {"state": {"type": {"any_": ["running"]}}}},
    {"flow_runs": {"start_time": {"before_": "garbage"}}},
    {"task_runs": {"tags": {"operator": None}}},
)

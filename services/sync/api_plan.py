"""PURE: the API mode's decisions — which entities a Prefect event names, what a snapshot
read from Prefect's REST API publishes, with which version, and what vanished.

Prefect's events carry no snapshots: an event only says that resources changed (its
`resource` and its `related` resources: the flow run, its flow and deployment, the task
run, the artifact). Every such entity is read again from the REST API (`read` gives its
JSON, or None when it answers 404), and `decide` turns (what was read, what this bridge
last published for it) into at most one contract event:

- a snapshot identical to the one published last publishes nothing (a Prefect event
  usually names several unchanged entities; a reconcile pass lists all of them);
- a changed snapshot is an upsert, versioned `max(updated in microseconds, last + 1)`;
- a 404 for an entity published as live is a delete, versioned `max(now, last + 1)`.

So versions grow strictly per entity whatever `updated` does (docs/adr/0009).
"""

from __future__ import annotations

import hashlib
import heapq
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

import orjson

from services.prefect.tables import CONTRACT_FIELDS, TABLES
from services.sync.changes import ContractEvent

RESOURCE_KINDS: Final = {
    "prefect.flow": "flow",
    "prefect.deployment": "deployment",
    "prefect.flow-run": "flow_run",
    "prefect.task-run": "task_run",
    "prefect.artifact": "artifact",
}
"""Prefect's resource id prefixes (`prefect.flow-run.<uuid>`) -> the contract's entities."""

API_COLLECTIONS: Final = {
    "flow": "flows",
    "deployment": "deployments",
    "flow_run": "flow_runs",
    "task_run": "task_runs",
    "artifact": "artifacts",
}
"""The REST API's path segment of each entity (`/flow_runs/{id}`, `/flow_runs/filter`)."""

LISTING_SORT: Final = {
    "flow": "UPDATED_DESC",
    "deployment": "UPDATED_DESC",
    "flow_run": "ID_DESC",  # Prefect offers no order by `updated` for runs
    "task_run": "ID_DESC",
    "artifact": "UPDATED_DESC",
}
"""The order of a reconcile pass's paged listing: by `updated` where Prefect offers it."""

EVENT_PREFIXES: Final = (
    "prefect.flow-run.",
    "prefect.task-run.",
    "prefect.artifact",
    "prefect.deployment.",
    "prefect.flow.",
)
"""The event names the subscription asks for (anything else never names our entities
as its main resource; related resources of these events name the rest)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class Ref(NamedTuple):
    """One entity: its contract name and canonical id."""

    entity: str
    id: str


def parse_time(value: str) -> datetime:
    """Prefect's JSON timestamp -> an aware UTC datetime (naive is read as UTC)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def micros(value: datetime) -> int:
    """Microseconds since the epoch."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def ref_of_resource(resource_id: str) -> Ref | None:
    """`prefect.flow-run.<uuid>` -> Ref('flow_run', uuid); None for other resources."""
    kind, _, tail = resource_id.rpartition(".")
    entity = RESOURCE_KINDS.get(kind)
    if entity is None:
        return None
    try:
        return Ref(entity, str(uuid.UUID(tail)))
    except ValueError:
        return None


def refs_of_event(event: Mapping[str, Any]) -> list[Ref]:
    """The entities a Prefect event names (its resource, then its related resources),
    each once, in that order."""
    resources = [event.get("resource") or {}, *(event.get("related") or [])]
    out: dict[Ref, None] = {}
    for resource in resources:
        if not isinstance(resource, Mapping):
            continue
        ref = ref_of_resource(str(resource.get("prefect.resource.id", "")))
        if ref is not None:
            out[ref] = None
    return list(out)


def event_occurred(event: Mapping[str, Any]) -> datetime | None:
    """When the event happened at Prefect (None when the field is absent or malformed)."""
    try:
        return parse_time(str(event["occurred"]))
    except (KeyError, ValueError):
        return None


def project_snapshot(entity: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The REST API's JSON of an entity -> the contract's `data` (its fields only; absent
    ones null, a null `tags` empty, as `backfill-prefect` and the CDC mode give them)."""
    data = {name: body.get(name) for name in CONTRACT_FIELDS[entity]}
    data["id"] = str(uuid.UUID(str(body["id"])))
    if "tags" in data and data["tags"] is None:
        data["tags"] = []
    return data


def digest_of(data: Mapping[str, Any]) -> str:
    """A short fingerprint of a snapshot, to publish only what changed."""
    raw = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Published:
    """What the bridge last published for an entity (kept in its checkpoint store)."""

    version: int
    updated_us: int
    digest: str
    deleted: bool = False


Source = Literal["read", "listing"]


def decide(
    ref: Ref,
    body: Mapping[str, Any] | None,
    last: Published | None,
    now: datetime,
    source: Source = "read",
) -> tuple[ContractEvent, Published] | None:
    """What to publish for `ref`, given what the API gave (None: 404) and what was
    published last; None when nothing changes.

    A `listing` snapshot older than the last published one (by `updated`), or of an entity
    published as deleted, is skipped: a page read before an event's fresher read (or its
    404) was applied must not take it back.
    """
    if source == "listing" and last is not None and last.deleted:
        return None  # a page read before the 404 that deleted it (Prefect never reuses ids)
    if body is None:
        if last is None or last.deleted:
            return None  # never published, or already deleted
        version = max(micros(now), last.version + 1)
        event = ContractEvent(ref.entity, ref.id, "delete", version, now)
        return event, Published(version, last.updated_us, last.digest, deleted=True)
    data = project_snapshot(ref.entity, body)
    updated = parse_time(str(data["updated"]))
    updated_us, digest = micros(updated), digest_of(data)
    if last is not None and not last.deleted:
        if last.digest == digest:
            return None
        if source == "listing" and updated_us < last.updated_us:
            return None
    version = updated_us if last is None else max(updated_us, last.version + 1)
    event = ContractEvent(ref.entity, ref.id, "upsert", version, updated, data)
    return event, Published(version, updated_us, digest)


def vanished(live: Iterable[str], listed: Iterable[str]) -> set[str]:
    """Ids published as live that a complete listing did not return: candidates for a
    delete, each to be confirmed by a 404 (a listing paged by offset can skip a row that
    moved while it was read)."""
    return set(live) - set(listed)


class TouchQueue:
    """Entities to read again, each once, when due; remembers the oldest Prefect event
    that asked for each (for the lag and the event checkpoint)."""

    def __init__(self) -> None:
        self._due: dict[Ref, float] = {}
        self._occurred: dict[Ref, datetime] = {}
        self._heap: list[tuple[float, Ref]] = []

    def schedule(self, ref: Ref, due: float, occurred: datetime | None = None) -> None:
        """Read `ref` at monotonic time `due` (the earlier one wins if already queued)."""
        current = self._due.get(ref)
        if current is None or due < current:
            self._due[ref] = due
            heapq.heappush(self._heap, (due, ref))
        if occurred is not None:
            known = self._occurred.get(ref)
            if known is None or occurred < known:
                self._occurred[ref] = occurred

    def pop_due(self, now: float, limit: int) -> list[tuple[Ref, datetime | None]]:
        """Up to `limit` refs due at `now`, earliest first, with the oldest event that
        asked for each."""
        out: list[tuple[Ref, datetime | None]] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now:
            due, ref = heapq.heappop(self._heap)
            if self._due.get(ref) != due:
                continue  # superseded by an earlier schedule
            del self._due[ref]
            out.append((ref, self._occurred.pop(ref, None)))
        return out

    def next_due(self) -> float | None:
        """When the earliest queued ref is due (None when empty)."""
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def oldest_occurred(self) -> datetime | None:
        """The oldest event still waiting for its reads."""
        return min(self._occurred.values(), default=None)

    def __len__(self) -> int:
        return len(self._due)


def checkpoint_after(
    oldest_waiting: datetime | None, newest_seen: datetime | None, saved: datetime | None
) -> datetime | None:
    """The event position to save: everything before the oldest event still waiting
    is published; with nothing waiting, the newest event seen. Never moves back."""
    candidate = oldest_waiting if oldest_waiting is not None else newest_seen
    if candidate is None:
        return saved
    if saved is not None and candidate < saved:
        return saved
    return candidate


__all__ = [
    "API_COLLECTIONS",
    "EVENT_PREFIXES",
    "LISTING_SORT",
    "RESOURCE_KINDS",
    "TABLES",
    "Published",
    "Ref",
    "TouchQueue",
    "checkpoint_after",
    "decide",
    "digest_of",
    "event_occurred",
    "micros",
    "parse_time",
    "project_snapshot",
    "ref_of_resource",
    "refs_of_event",
    "vanished",
]

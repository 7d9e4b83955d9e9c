"""The API mode's pure decisions: which entities an event names, what a snapshot publishes
and with which version, what vanished, the read queue and the event checkpoint."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.sync.api_plan import (
    Published,
    Ref,
    TouchQueue,
    checkpoint_after,
    decide,
    micros,
    project_snapshot,
    ref_of_resource,
    refs_of_event,
    vanished,
)

FLOW_RUN = "c4257c83-445a-4f4d-a6e5-619fe4d529d7"
FLOW = "f407566c-03ed-4cdc-94d7-ca0cc9e37d90"
TASK_RUN = "01a22e3c-4c27-7038-91ee-79f4d7268027"
ARTIFACT = "b92ea4c3-8f22-43c3-bc6c-639849a975d3"
T0 = datetime(2026, 11, 30, 20, 53, 52, 633355, tzinfo=UTC)


def artifact(updated: datetime, data: str = "# x", **extra: Any) -> dict[str, Any]:
    """An artifact as Prefect's REST API returns it (with fields the contract ignores)."""
    return {
        "id": ARTIFACT,
        "created": "2026-11-30T20:53:53.458459Z",
        "updated": updated.isoformat().replace("+00:00", "Z"),
        "key": "k1",
        "type": "markdown",
        "description": None,
        "data": data,
        "metadata_": None,
        "flow_run_id": FLOW_RUN,
        "task_run_id": TASK_RUN,
        "unknown_field": 1,
        **extra,
    }


def test_an_event_names_its_resource_and_related_entities_once() -> None:
    # the shape of a real `prefect.artifact.created` event of Prefect 3.9.1
    event = {
        "occurred": "2026-11-30T20:53:53.503710Z",
        "event": "prefect.artifact.created",
        "resource": {"prefect.resource.id": f"prefect.artifact.{ARTIFACT}"},
        "related": [
            {"prefect.resource.id": f"prefect.flow-run.{FLOW_RUN}", "prefect.resource.role": "x"},
            {"prefect.resource.id": f"prefect.task-run.{TASK_RUN}"},
            {"prefect.resource.id": f"prefect.flow.{FLOW}"},
            {"prefect.resource.id": f"prefect.flow-run.{FLOW_RUN}"},  # twice: once out
            {"prefect.resource.id": "prefect.work-queue.5d0e3f4c-3b7a-4c55-9a43-0c6a7e1c2b10"},
            {"prefect.resource.id": "prefect.tag.nightly"},
        ],
    }
    assert refs_of_event(event) == [
        Ref("artifact", ARTIFACT),
        Ref("flow_run", FLOW_RUN),
        Ref("task_run", TASK_RUN),
        Ref("flow", FLOW),
    ]


def test_resource_ids_that_are_not_our_entities_are_ignored() -> None:
    assert ref_of_resource(f"prefect.artifact-collection.{ARTIFACT}") is None
    assert ref_of_resource("prefect.flow-run.not-a-uuid") is None
    assert ref_of_resource(f"prefect.deployment.{FLOW.upper()}") == Ref("deployment", FLOW)
    assert refs_of_event({"resource": {}, "related": ["junk", {}]}) == []


def test_a_snapshot_keeps_the_contract_fields_only() -> None:
    data = project_snapshot("artifact", artifact(T0))
    assert "unknown_field" not in data
    assert data["id"] == ARTIFACT and data["flow_run_id"] == FLOW_RUN
    flow = project_snapshot("flow", {"id": FLOW.upper(), "created": "x", "updated": "y"})
    assert flow == {"id": FLOW, "created": "x", "updated": "y", "name": None, "tags": []}


def test_a_first_snapshot_is_versioned_by_updated() -> None:
    outcome = decide(Ref("artifact", ARTIFACT), artifact(T0), None, T0)
    assert outcome is not None
    event, published = outcome
    assert (event.op, event.version, event.occurred) == ("upsert", micros(T0), T0)
    assert published.version == micros(T0) and not published.deleted
    envelope = orjson.loads(event.encode())
    assert envelope["entity"] == "artifact" and envelope["data"]["data"] == "# x"


def test_an_unchanged_snapshot_publishes_nothing() -> None:
    ref = Ref("artifact", ARTIFACT)
    first = decide(ref, artifact(T0), None, T0)
    assert first is not None
    assert decide(ref, artifact(T0), first[1], T0) is None
    assert decide(ref, artifact(T0, other="ignored"), first[1], T0) is None


def test_versions_grow_even_when_updated_does_not() -> None:
    ref = Ref("artifact", ARTIFACT)
    first = decide(ref, artifact(T0), None, T0)
    assert first is not None
    # a change committed by a transaction that started earlier: an older `updated`
    second = decide(ref, artifact(T0 - timedelta(seconds=1), data="# y"), first[1], T0)
    assert second is not None
    assert second[0].version == first[1].version + 1
    later = T0 + timedelta(seconds=5)
    third = decide(ref, artifact(later, data="# z"), second[1], later)
    assert third is not None and third[0].version == micros(later)


def test_an_older_listing_does_not_take_back_a_fresher_read() -> None:
    ref = Ref("artifact", ARTIFACT)
    fresh = decide(ref, artifact(T0, data="# new"), None, T0)
    assert fresh is not None
    stale = artifact(T0 - timedelta(seconds=2), data="# old")
    assert decide(ref, stale, fresh[1], T0, source="listing") is None
    # a read (after an event) is the present: it applies
    assert decide(ref, stale, fresh[1], T0, source="read") is not None


def test_a_404_deletes_what_was_published_once() -> None:
    ref = Ref("artifact", ARTIFACT)
    assert decide(ref, None, None, T0) is None  # never published: nothing to delete
    first = decide(ref, artifact(T0), None, T0)
    assert first is not None
    now = T0 + timedelta(minutes=1)
    gone = decide(ref, None, first[1], now)
    assert gone is not None
    event, published = gone
    assert (event.op, event.version, event.data) == ("delete", micros(now), None)
    assert published.deleted
    assert decide(ref, None, published, now) is None  # already deleted
    # a listing page read before that 404 does not bring it back; a read would
    assert decide(ref, artifact(T0), published, now, source="listing") is None
    back = decide(ref, artifact(now, data="# back"), published, now)
    assert back is not None and back[0].version == published.version + 1
    # a clock behind the last version still gives a greater one
    early = decide(ref, None, Published(micros(now) + 10, 0, "d"), T0)
    assert early is not None and early[0].version == micros(now) + 11


def test_vanished_ids_are_the_published_ones_a_listing_lacks() -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    assert vanished(ids[:3], [ids[0], ids[2], ids[3]]) == {ids[1]}
    assert vanished([], ids) == set()


def test_the_queue_reads_each_entity_once_when_due_earliest_first() -> None:
    queue = TouchQueue()
    a, b, c = (Ref("flow_run", str(uuid.uuid4())) for _ in range(3))
    queue.schedule(a, 5.0, T0 + timedelta(seconds=2))
    queue.schedule(b, 3.0)
    queue.schedule(a, 2.0, T0)  # earlier: wins, and its event is older
    queue.schedule(c, 9.0, T0 + timedelta(seconds=9))
    queue.schedule(c, 10.0)  # later: ignored
    assert len(queue) == 3 and queue.next_due() == 2.0
    assert queue.oldest_occurred() == T0
    assert queue.pop_due(1.0, 10) == []
    assert queue.pop_due(4.0, 10) == [(a, T0), (b, None)]
    assert queue.oldest_occurred() == T0 + timedelta(seconds=9)
    assert queue.next_due() == 9.0
    assert queue.pop_due(100.0, 10) == [(c, T0 + timedelta(seconds=9))]
    assert len(queue) == 0 and queue.next_due() is None and queue.oldest_occurred() is None


def test_the_queue_pops_at_most_limit() -> None:
    queue = TouchQueue()
    refs = [Ref("artifact", str(uuid.uuid4())) for _ in range(5)]
    for n, ref in enumerate(refs):
        queue.schedule(ref, float(n))
    assert [r for r, _ in queue.pop_due(10.0, 2)] == refs[:2]
    assert len(queue) == 3


def test_the_event_checkpoint_stops_before_the_oldest_waiting_event_and_never_goes_back() -> None:
    later = T0 + timedelta(seconds=30)
    assert checkpoint_after(None, None, None) is None
    assert checkpoint_after(None, later, None) == later
    assert checkpoint_after(T0, later, None) == T0
    assert checkpoint_after(T0, later, later) == later
    assert checkpoint_after(None, None, T0) == T0

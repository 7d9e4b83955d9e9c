"""Pure event -> document logic: parsing, folding, fan-out selection, reference resolution."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from indexer.projection import Affected, Stored, affected_by, reduce_events, relation_adds
from services.contract import encode_event, parse_record
from services.documents import (
    NeedDocs,
    ascii_lower,
    format_timestamp,
    resolve_refs,
    snapshot_id,
    subflows_id,
    to_micros,
)
from services.errors import PoisonEventError

FR = str(uuid.uuid4())
FLOW = str(uuid.uuid4())


def run(version: int, **kw: Any) -> bytes:
    data = {
        "id": FR,
        "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-01T00:00:00Z",
        "name": "r",
        "flow_id": FLOW,
        **kw,
    }
    return encode_event("flow_run", FR, "upsert", version, data)


def test_timestamps_follow_prefects_json_form() -> None:
    assert format_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"
    assert (
        format_timestamp(datetime(2024, 1, 2, 3, 4, 5, 120, tzinfo=UTC))
        == "2024-01-02T03:04:05.000120Z"
    )
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_ascii_lower_folds_only_ascii() -> None:
    assert ascii_lower("ÄbC-Ü") == "Äbc-Ü"


@pytest.mark.parametrize(
    ("entity", "key", "value", "reason"),
    [
        ("flow_run", FR.encode(), b"{nope", "invalid_json"),
        ("flow_run", b"XYZ", run(1), "invalid_key"),
        ("flow_run", FR.upper().encode(), run(1), "invalid_key"),
        ("flow", FR.encode(), run(1), "entity_mismatch"),
        ("flow_run", str(uuid.uuid4()).encode(), run(1), "key_mismatch"),
        ("flow_run", FR.encode(), run(1, tags="not-a-list"), "invalid_data"),
        ("flow_run", FR.encode(), b'{"op": "upsert"}', "invalid_envelope"),
        ("flow_run", FR.encode(), b"\xff\xfe", "invalid_json"),
        ("flow_run", None, run(1), "missing_key"),
    ],
)
def test_poison_records_name_their_reason(
    entity: str, key: bytes | None, value: bytes, reason: str
) -> None:
    with pytest.raises(PoisonEventError) as info:
        parse_record(entity, key, value)
    assert info.value.reason == reason


def test_float_versions_are_rejected() -> None:
    raw = run(1).replace(b'"version":1', b'"version":1.5')
    with pytest.raises(PoisonEventError):
        parse_record("flow_run", FR.encode(), raw)


def test_last_version_wins_and_tombstones_delete_whatever_the_version() -> None:
    events = [
        parse_record("flow_run", FR.encode(), run(v, state_type=s))
        for v, s in [(5, "RUNNING"), (3, "FAILED"), (5, "FAILED")]
    ]
    out = reduce_events("flow_run", FR, None, events)
    assert out.after is not None and out.after.version == 5
    assert out.after.doc is not None and out.after.doc["state_type"] == "RUNNING"
    assert (out.applied, out.stale) == (1, 2)
    tomb = parse_record("flow_run", FR.encode(), None)
    deleted = reduce_events("flow_run", FR, out.after, [tomb])
    assert deleted.after is not None and deleted.after.deleted and deleted.after.version == 5
    # an older upsert stays rejected after the tombstone, a newer one revives
    older = reduce_events(
        "flow_run", FR, deleted.after, [parse_record("flow_run", FR.encode(), run(4))]
    )
    assert older.after is deleted.after and not older.changed
    newer = reduce_events(
        "flow_run", FR, deleted.after, [parse_record("flow_run", FR.encode(), run(6))]
    )
    assert newer.after is not None and not newer.after.deleted


def test_redelivery_of_the_stored_version_reruns_effects() -> None:
    first = reduce_events("flow_run", FR, None, [parse_record("flow_run", FR.encode(), run(2))])
    again = reduce_events(
        "flow_run", FR, first.after, [parse_record("flow_run", FR.encode(), run(2))]
    )
    assert not again.changed and again.redo and again.effective


def test_fan_out_selects_old_and_new_parents() -> None:
    old_parent, new_parent = str(uuid.uuid4()), str(uuid.uuid4())
    before = reduce_events(
        "flow_run",
        FR,
        None,
        [parse_record("flow_run", FR.encode(), run(1, parent_task_run_id=old_parent))],
    )
    after = reduce_events(
        "flow_run",
        FR,
        before.after,
        [parse_record("flow_run", FR.encode(), run(2, parent_task_run_id=new_parent))],
    )
    affected = Affected()
    affected_by(after, affected)
    assert affected.terms["flow_run_id"] == {FR}
    assert affected.terms["task_run_id"] == {old_parent, new_parent}
    assert relation_adds(after) == [(subflows_id(new_parent), FR)]


def test_resolve_asks_for_what_it_lacks_then_builds_refs() -> None:
    tr = str(uuid.uuid4())
    first = resolve_refs(FR, tr, {})
    assert isinstance(first, NeedDocs)
    assert first.ids == {snapshot_id("flow_run", FR), snapshot_id("task_run", tr)}
    snaps: dict[str, dict[str, Any] | None] = {
        snapshot_id("flow_run", FR): {"deleted": False, "data": {"id": FR, "flow_id": FLOW}},
        snapshot_id("task_run", tr): {"deleted": True, "data": {"id": tr}},
        snapshot_id("flow", FLOW): None,
    }
    second = resolve_refs(FR, tr, snaps)
    assert second == {"fr": {"id": FR, "flow_id": FLOW}, "flow": None, "dep": None, "tr": None}


def test_stored_states_without_documents_fold_to_inserts() -> None:
    stored = Stored(version=1, deleted=True, doc=None)
    out = reduce_events("flow_run", FR, stored, [parse_record("flow_run", FR.encode(), run(2))])
    assert out.changed and out.after is not None and not out.after.deleted

"""Collections: which keys a batch merges and which it rebuilds, and the merge itself."""

from __future__ import annotations

from typing import Any

from indexer.projection import Outcome, Stored, collection_changes, merge_collection
from services.documents import collection_id


def art(aid: str, key: str | None, created_us: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": aid,
        "key": key,
        "created": f"t{created_us}",
        "created_us": created_us,
        "type": "markdown",
        "live": True,
        **extra,
    }


def outcome(before: dict[str, Any] | None, after: dict[str, Any] | None, **kw: Any) -> Outcome:
    b = None if before is None else Stored(1, not before.get("live", True), before)
    a = Stored(2, after is None, after if after is not None else {"prev_keys": ["k"]})
    return Outcome("artifact", "a1", b, a, changed=True, **kw)


def test_a_new_artifact_is_merged() -> None:
    changes = collection_changes([outcome(None, art("a1", "k", 5))])
    assert set(changes.merge) == {"k"} and not changes.recompute


def test_an_in_place_update_is_merged() -> None:
    before, after = art("a1", "k", 5), art("a1", "k", 5, type="table")
    changes = collection_changes([outcome(before, after)])
    assert changes.merge == {"k": [after]} and not changes.recompute


def test_key_change_rebuilds_the_old_key_and_merges_the_new() -> None:
    changes = collection_changes([outcome(art("a1", "old", 5), art("a1", "new", 5))])
    assert changes.recompute == {"old"} and set(changes.merge) == {"new"}


def test_created_change_rebuilds_the_key() -> None:
    changes = collection_changes([outcome(art("a1", "k", 5), art("a1", "k", 9))])
    assert changes.recompute == {"k"} and not changes.merge


def test_delete_rebuilds_the_key() -> None:
    changes = collection_changes([outcome(art("a1", "k", 5), None)])
    assert changes.recompute == {"k"} and not changes.merge


def test_remembered_earlier_keys_are_rebuilt() -> None:
    before = art("a1", "k", 5, prev_keys=["older"])
    changes = collection_changes([outcome(before, art("a1", "k", 5))])
    assert changes.recompute == {"older"} and set(changes.merge) == {"k"}


def test_a_rebuild_wins_over_a_merge_of_the_same_key() -> None:
    moved = outcome(art("a1", "k", 5), art("a1", "other", 5))
    joined = Outcome("artifact", "a2", None, Stored(1, False, art("a2", "k", 7)), changed=True)
    changes = collection_changes([moved, joined])
    assert changes.recompute == {"k"} and set(changes.merge) == {"other"}


def test_stale_outcomes_touch_nothing() -> None:
    same = Stored(1, False, art("a1", "k", 5))
    changes = collection_changes([Outcome("artifact", "a1", same, same, changed=False)])
    assert not changes.merge and not changes.recompute


def stored(latest: dict[str, Any], earliest_us: int) -> dict[str, Any]:
    own, _ = merge_collection(None, [latest])
    own["created"], own["created_us"] = f"t{earliest_us}", earliest_us
    own["fr"] = {"id": "run"}
    return own


def test_merge_into_nothing_takes_latest_and_earliest_of_the_batch() -> None:
    own, new_latest = merge_collection(None, [art("b", "k", 5), art("a", "k", 9), art("c", "k", 9)])
    assert new_latest
    assert (own["latest_id"], own["updated_us"], own["created_us"]) == ("c", 9, 5)
    assert own["id"] == collection_id("k") and own["created"] == "t5"


def test_an_older_artifact_keeps_the_latest_and_its_references() -> None:
    current = stored(art("x", "k", 50), earliest_us=20)
    own, new_latest = merge_collection(current, [art("y", "k", 10)])
    assert not new_latest
    assert (own["latest_id"], own["updated_us"], own["created_us"]) == ("x", 50, 10)
    assert "fr" not in own  # references are the caller's: kept from the stored document


def test_a_newer_artifact_replaces_the_latest() -> None:
    current = stored(art("x", "k", 50), earliest_us=20)
    own, new_latest = merge_collection(current, [art("y", "k", 60)])
    assert new_latest
    assert (own["latest_id"], own["updated_us"], own["created_us"]) == ("y", 60, 20)


def test_equal_created_breaks_ties_by_id() -> None:
    current = stored(art("m", "k", 50), earliest_us=50)
    assert merge_collection(current, [art("a", "k", 50)])[0]["latest_id"] == "m"
    assert merge_collection(current, [art("z", "k", 50)])[0]["latest_id"] == "z"


def test_an_update_of_the_latest_replaces_its_content() -> None:
    current = stored(art("x", "k", 50), earliest_us=20)
    own, new_latest = merge_collection(current, [art("x", "k", 50, type="table")])
    assert new_latest and own["type"] == "table" and own["created_us"] == 20

"""The API mode's reconcile passes: which are full and how far back the others list
(pure), the high-water mark kept in the checkpoint, and a session's passes over a fake
Prefect API (no servers): an incremental pass reads only the pages that changed, finds
changes without events, and leaves deletions to the next full pass."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from services.config import KafkaSettings
from services.sync.api_bridge import ApiSyncOptions
from services.sync.api_passes import (
    INCREMENTAL,
    Listing,
    high_water_after,
    plan_pass,
    reached_back,
)
from services.sync.api_plan import Ref
from services.sync.api_session import ApiSession, Shared
from services.sync.api_state import ApiSyncStore
from services.sync.prefect_api import PrefectAPI
from tests.unit.test_sync_api_publish import FakeProducer

URL = "http://prefect.test/api"
T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_the_incremental_collections_are_those_prefect_orders_by_updated() -> None:
    assert {"flow", "deployment", "artifact"} == INCREMENTAL


def test_a_sessions_first_pass_and_every_nth_are_full() -> None:
    marks = {e: T0 for e in ("flow", "deployment", "flow_run", "task_run", "artifact")}
    overlap = timedelta(minutes=10)
    kinds = [plan_pass(n, 3, marks, overlap).full for n in range(7)]
    assert kinds == [True, False, False, True, False, False, True]
    plan = plan_pass(1, 3, marks, overlap)
    assert {listing.entity: listing.since for listing in plan.listings} == {
        "flow": T0 - overlap,
        "deployment": T0 - overlap,
        "flow_run": None,  # no order by `updated`: always listed whole
        "task_run": None,
        "artifact": T0 - overlap,
    }
    # without a mark (a new checkpoint, a collection never listed) a listing is whole
    assert plan_pass(1, 3, {"flow": T0}, overlap).listings[4] == Listing("artifact")
    assert all(plan_pass(n, 1, marks, overlap).full for n in range(4))
    with pytest.raises(ValueError):
        plan_pass(0, 0, marks, overlap)


def test_a_listing_ends_at_a_short_page_or_once_it_reaches_back_past_since() -> None:
    since = Listing("artifact", T0)
    assert not reached_back(since, [T0 + 2 * HOUR, T0 + HOUR], page_full=True)
    assert reached_back(since, [T0 + HOUR, T0], page_full=True)  # `since` itself: done
    assert reached_back(since, [T0 + HOUR], page_full=False)
    whole = Listing("artifact")
    assert not reached_back(whole, [T0 - 9 * HOUR], page_full=True)
    assert reached_back(whole, [], page_full=False)


def test_the_high_water_mark_only_moves_forward() -> None:
    assert high_water_after(None, []) is None
    assert high_water_after(None, [T0, T0 + HOUR]) == T0 + HOUR
    assert high_water_after(T0 + 2 * HOUR, [T0, T0 + HOUR]) == T0 + 2 * HOUR
    assert high_water_after(T0, []) == T0


def test_the_store_keeps_the_marks_across_a_reopen(tmp_path: Path) -> None:
    store = ApiSyncStore(tmp_path / "s.sqlite", URL)
    assert store.high_water() == {}
    store.save_high_water("artifact", T0)
    store.save_high_water("flow", T0 + HOUR)
    store.close()
    again = ApiSyncStore(tmp_path / "s.sqlite", URL)
    assert again.high_water() == {"artifact": T0, "flow": T0 + HOUR}
    again.close()


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


class FakePrefect:
    """Artifacts only (the other collections empty), listed newest `updated` first;
    counts the pages each listing asked for."""

    def __init__(self, n: int) -> None:
        self.artifacts = {
            uid(i): self.body(uid(i), T0 + i * timedelta(seconds=1)) for i in range(n)
        }
        self.pages: list[tuple[str, int]] = []

    @staticmethod
    def body(aid: str, updated: datetime, data: str = "x") -> dict[str, Any]:
        return {"id": aid, "created": T0.isoformat(), "updated": updated.isoformat(), "data": data}

    async def list_page(self, entity: str, offset: int, limit: int) -> list[dict[str, Any]]:
        self.pages.append((entity, offset))
        if entity != "artifact":
            return []
        newest = sorted(self.artifacts.values(), key=lambda b: b["updated"], reverse=True)
        return newest[offset : offset + limit]

    async def read(self, ref: Ref) -> dict[str, Any] | None:
        return self.artifacts.get(ref.id) if ref.entity == "artifact" else None

    async def count(self, entity: str) -> int:
        return len(self.artifacts) if entity == "artifact" else 0


def fake_session(prefect: FakePrefect, full_every: int) -> tuple[ApiSession, FakeProducer]:
    producer = FakeProducer()
    options = ApiSyncOptions(
        api_url=URL,
        state_path=None,
        page_size=10,
        reconcile_interval_s=0,
        reconcile_full_every=full_every,
        reconcile_overlap_s=5,
    )
    shared = Shared(options, on_ready=lambda _: None)
    kafka = KafkaSettings(bootstrap_servers="unused:9092", topic_prefix="t.")
    store = ApiSyncStore(None, URL)
    api = cast(PrefectAPI, prefect)
    return ApiSession(shared, kafka, api, store, cast(Any, producer)), producer


def artifact_pages(prefect: FakePrefect) -> int:
    """Pages of the artifact listing asked for since the last call."""
    pages = [p for p in prefect.pages if p[0] == "artifact"]
    prefect.pages.clear()
    return len(pages)


async def test_incremental_passes_read_only_what_changed_and_full_ones_find_deletions() -> None:
    prefect = FakePrefect(100)
    session, producer = fake_session(prefect, 3)
    store = session.store

    async def run_pass(number: int) -> None:
        plan = plan_pass(number, 3, store.high_water(), timedelta(seconds=5))
        await session.reconcile_pass(not store.snapshot_complete, plan)
        store.mark_snapshot_complete()

    await run_pass(0)  # full: the initial snapshot
    assert len(producer.sent) == 100 and artifact_pages(prefect) == 11
    assert store.high_water() == {"artifact": T0 + timedelta(seconds=99)}

    # changed without an event (now the newest), and one deleted
    prefect.artifacts[uid(50)] = prefect.body(uid(50), T0 + timedelta(seconds=200), "y")
    del prefect.artifacts[uid(3)]
    await run_pass(1)  # incremental: the first page reaches back past the mark - 5 s
    assert artifact_pages(prefect) == 1
    assert len(producer.sent) == 101  # the change
    assert uid(3) in store.live_ids("artifact")  # a partial listing finds no deletion
    assert store.high_water() == {"artifact": T0 + timedelta(seconds=200)}
    await run_pass(2)  # nothing changed: one page, nothing sent
    assert artifact_pages(prefect) == 1 and len(producer.sent) == 101
    await run_pass(3)  # full: the deletion is found
    assert artifact_pages(prefect) == 10 and len(producer.sent) == 102
    assert store.live_ids("artifact") == {uid(i) for i in range(100)} - {uid(3)}


async def test_the_session_loop_alternates_as_planned() -> None:
    prefect = FakePrefect(100)
    session, _ = fake_session(prefect, 2)
    by_pass: list[int] = []
    listing = prefect.list_page

    async def list_page(entity: str, offset: int, limit: int) -> list[dict[str, Any]]:
        if entity == "artifact":
            by_pass.append(session.shared.passes)
        return await listing(entity, offset, limit)

    prefect.list_page = list_page  # type: ignore[method-assign]
    stop, reconciled = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(session.reconcile(stop, reconciled))
    for _ in range(100_000):
        if session.shared.passes >= 3:
            break
        await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 10)
    # full (11 pages of 10 for 100 artifacts), incremental (1 page), full again
    assert [by_pass.count(n) for n in range(3)] == [11, 1, 11]

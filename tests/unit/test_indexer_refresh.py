"""Refreshes after writes (indexer/refresh.py) over fakes: coalesced, at most one per
interval, never fatal, never forgotten; and the processor asks for them for steps that
wrote, holding back what steps deferring their documents (a backlog) wrote until a step
that does not defer."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest

from indexer.refresh import Refresher
from services.contract import encode_event
from tests.unit.indexer_fakes import FakeEpochs, FakeIndex, Replica, number


class Clock:
    """A clock the test moves, and a `sleep` that moves it once the test lets it return."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.release = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await self.release.wait()
        self.release.clear()
        self.now += seconds


class FakeRefresh:
    def __init__(self, failures: int = 0) -> None:
        self.calls: list[str] = []
        self.failures = failures

    async def __call__(self, indices: str) -> None:
        self.calls.append(indices)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("injected: Elasticsearch is unreachable")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _running(refresher: Refresher) -> asyncio.Task[None]:
    task = asyncio.create_task(refresher.run())
    await _settle()
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nothing_requested_nothing_refreshed() -> None:
    refresh = FakeRefresh()
    task = await _running(Refresher(refresh, 0.25))
    await _settle()
    assert refresh.calls == []
    await _stop(task)


async def test_requests_within_an_interval_are_one_refresh_of_every_index_written() -> None:
    clock, refresh = Clock(), FakeRefresh()
    refresher = Refresher(refresh, 0.25, clock=clock, sleep=clock.sleep)
    task = await _running(refresher)

    refresher.request({"artifacts"})  # the first one goes at once
    await _settle()
    assert refresh.calls == ["artifacts"]
    assert clock.slept == []

    clock.now += 0.1  # 0.1 s later: the next refresh waits for the rest of the interval
    refresher.request({"collections"})
    await _settle()
    assert clock.slept == [pytest.approx(0.15)]
    refresher.request({"artifacts"})  # while it waits: joins it
    refresher.request({"collections", "artifacts"})
    await _settle()
    assert refresh.calls == ["artifacts"]
    clock.release.set()
    await _settle()
    assert refresh.calls == ["artifacts", "artifacts,collections"]
    assert refresher.pending == set()

    clock.now += 10  # long after: at once again
    refresher.request({"collections"})
    await _settle()
    assert refresh.calls[-1] == "collections"
    assert clock.slept == [pytest.approx(0.15)]
    assert refresher.refreshes == 3
    await _stop(task)


async def test_an_empty_request_refreshes_nothing() -> None:
    refresh = FakeRefresh()
    refresher = Refresher(refresh, 0.25)
    task = await _running(refresher)
    refresher.request(set())
    await _settle()
    assert refresh.calls == []
    await _stop(task)


async def test_a_failed_refresh_is_logged_and_asked_again_after_a_growing_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, refresh = Clock(), FakeRefresh(failures=2)
    refresher = Refresher(refresh, 0.25, clock=clock, sleep=clock.sleep, max_backoff_s=0.75)
    task = await _running(refresher)
    with caplog.at_level(logging.WARNING, logger="indexer.refresh"):
        refresher.request({"artifacts"})
        await _settle()
    assert "refresh of ['artifacts'] failed" in caplog.text
    assert refresher.refreshes == 0
    assert not task.done()  # the loop goes on
    assert refresher.pending == {"artifacts"}  # not forgotten: nobody has to ask again

    assert clock.slept == [pytest.approx(0.5)]  # twice the interval after one failure
    refresher.request({"collections"})  # joins the retry
    clock.release.set()
    await _settle()
    assert refresh.calls == ["artifacts", "artifacts,collections"]  # failed again
    assert clock.slept[-1] == pytest.approx(0.75)  # 1.0, capped
    clock.release.set()
    await _settle()
    assert refresh.calls[-1] == "artifacts,collections"
    assert refresher.refreshes == 1
    assert refresher.pending == set()

    clock.now += 10  # after a success the pause is the interval again
    refresher.request({"artifacts"})
    await _settle()
    assert refresh.calls[-1] == "artifacts" and len(refresh.calls) == 4
    await _stop(task)


# -- the processor --------------------------------------------------------------------------
TS = "2026-01-01T00:00:00Z"


def _artifact(i: int, version: int = 1) -> tuple[str, bytes, bytes]:
    artifact_id = str(uuid.UUID(int=100 + i, version=4))
    data: dict[str, Any] = {"id": artifact_id, "created": TS, "updated": TS, "key": f"k{i}"}
    data |= {"type": "markdown", "data": "x"}
    return (
        "artifact",
        artifact_id.encode(),
        encode_event("artifact", artifact_id, "upsert", version, data),
    )


def _replica(defer: bool) -> tuple[Replica, list[set[str]]]:
    asked: list[set[str]] = []
    replica = Replica(FakeIndex(), FakeEpochs(), defer=defer, local_members=True)
    replica.processor.written = asked.append
    replica.own_all()
    return replica, asked


async def test_a_step_that_wrote_asks_for_the_indices_it_wrote() -> None:
    replica, asked = _replica(defer=False)
    records = number([_artifact(i) for i in range(3)])
    await replica.processor.process(records, behind=0)
    assert asked == [{"artifacts", "collections"}]
    assert {index for index, _ in replica.index.docs} == {"artifacts", "collections"}

    await replica.processor.process(records, behind=0)  # redelivered: nothing written
    assert asked == [{"artifacts", "collections"}]


async def test_a_step_deferring_its_documents_behind_a_backlog_asks_later() -> None:
    replica, asked = _replica(defer=True)
    records = number([_artifact(i) for i in range(3)])
    await replica.processor.process(records, behind=1_000)  # a backlog: more than defer_lag
    assert replica.index.docs  # its artifacts' own documents are written all the same
    assert asked == []
    await replica.processor.drain()  # the backlog is gone: the marks are written
    # and what the deferring step wrote is refreshed with them
    assert asked == [{"artifacts", "collections"}]
    assert not replica.processor.has_work()


async def test_what_a_deferring_step_wrote_is_refreshed_when_nothing_else_is_left() -> None:
    replica, asked = _replica(defer=True)
    await replica.processor.drain()  # the marks of the new partitions: none left after it
    assert not replica.processor.has_work()
    keyless = []
    for i in range(3):  # no key: no collection, so no mark is left for a later step
        topic, key, value = _artifact(i)
        keyless.append((topic, key, value.replace(f'"key":"k{i}",'.encode(), b"")))
    assert all(b'"key"' not in v for _, _, v in keyless)
    await replica.processor.process(number(keyless), behind=1_000)
    assert {index for index, _ in replica.index.docs} == {"artifacts"}
    assert asked == []
    assert not replica.processor._has_pending_work()  # no mark, no rewrite
    assert replica.processor.has_work()  # but a refresh is owed: the idle loop steps
    await replica.processor.drain()
    assert asked == [{"artifacts"}]
    assert not replica.processor.has_work()

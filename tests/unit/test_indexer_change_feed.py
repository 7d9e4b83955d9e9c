"""The indexer's change feed over in-memory fakes: every artifact document a committed step
wrote is announced with its version, propagated rewrites included, and a step whose feed
cannot be published is not committed."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from indexer.runtime import PipelineError
from indexer.writer import Versioned
from services.contract import encode_event
from services.errors import PermanentError, TransientError
from tests.unit.indexer_fakes import KAFKA, FakeEpochs, FakeIndex, Replica, number

TS = "2026-01-01T00:00:00Z"
FLOW, RUN = str(uuid.UUID(int=1, version=4)), str(uuid.UUID(int=2, version=4))
ARTIFACTS = [str(uuid.UUID(int=10 + i, version=4)) for i in range(4)]


def _event(
    entity: str, entity_id: str, version: int, body: dict[str, Any]
) -> tuple[str, bytes, bytes]:
    data = {"id": entity_id, "created": TS, "updated": TS, **body}
    return entity, entity_id.encode(), encode_event(entity, entity_id, "upsert", version, data)


def _run(state: str, version: int) -> tuple[str, bytes, bytes]:
    return _event("flow_run", RUN, version, {"name": "r", "flow_id": FLOW, "state_type": state})


class Feed:
    """Records what the processor publishes; fails on demand."""

    def __init__(self, failures: int = 0, error: type[Exception] = TransientError) -> None:
        self.pairs: list[tuple[str, int]] = []
        self.failures = failures
        self.error = error

    async def __call__(self, writes: Sequence[Versioned]) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error("injected: Kafka refused the change feed")
        self.pairs.extend((w.doc_id, w.version) for w in writes if w.index == "artifacts")


def _replica(feed: Feed) -> Replica:
    replica = Replica(FakeIndex(), FakeEpochs())
    replica.processor.publish_changes = feed
    replica.own_all()
    return replica


def _latest(pairs: Sequence[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for doc_id, version in pairs:
        out[doc_id] = max(version, out.get(doc_id, 0))
    return out


async def test_every_written_artifact_document_is_announced_with_its_version() -> None:
    feed = Feed(failures=2)  # retried like any other effect
    replica = _replica(feed)
    events = [_event("flow", FLOW, 1, {"name": "etl"}), _run("RUNNING", 1)]
    events += [
        _event("artifact", a, 1, {"key": "k", "type": "markdown", "data": "x", "flow_run_id": RUN})
        for a in ARTIFACTS
    ]
    records = number([*events, _run("FAILED", 2)])  # offsets continue across both feeds
    await replica.feed(records[:-1], batch=3)
    stored = {
        doc_id: v for (index, doc_id), (v, _) in replica.index.docs.items() if index == "artifacts"
    }
    assert set(stored) == set(ARTIFACTS)
    assert _latest(feed.pairs) == stored

    # the run's state changes: the propagated rewrites of its artifacts are announced too
    before = dict(stored)
    await replica.feed(records[-1:])
    after = {
        doc_id: v for (index, doc_id), (v, _) in replica.index.docs.items() if index == "artifacts"
    }
    assert all(after[a] > before[a] for a in ARTIFACTS)
    assert _latest(feed.pairs) == after


async def test_a_step_whose_feed_cannot_be_published_is_not_committed() -> None:
    feed = Feed(failures=1, error=PermanentError)
    replica = _replica(feed)
    records = number([_event("artifact", ARTIFACTS[0], 1, {"key": "k", "type": "markdown"})])
    with pytest.raises(PermanentError):
        await replica.processor.process(records)
    record = records[0]
    assert replica.processor.position(record.topic, record.partition) == 0
    with pytest.raises(PipelineError):  # nothing else is applied until the caller resets
        await replica.processor.process(records)
    assert record.topic == KAFKA.topic_for("artifact")

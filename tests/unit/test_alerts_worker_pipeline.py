"""The alerts worker's batch pipeline, with in-memory fakes (no Kafka, no Elasticsearch).

A batch's delivery (ledger claim, Kafka publish, mark) overlaps the next batch's
evaluation; deliveries, publications and offset commits stay in batch order, each batch
commits exactly its own offsets and only after its alerts were acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from alerts.kafka_io import next_offsets
from alerts.ledger import Claimed
from alerts.model import AlertMessage, Match, SavedSearch, alert_id
from alerts.worker import AlertWorker
from query.extension import SearchRequest
from services.changes import encode_changes
from services.config import AlertsSettings, KafkaSettings

TOPIC = "changes"
SEARCH = SavedSearch(
    id="s1",
    name="everything",
    search=SearchRequest(),
    created="2026-01-01T00:00:00Z",
    updated="2026-01-01T00:00:00Z",
    fingerprint="f1",
)


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes


def batch(partition: int, first_offset: int, artifact_ids: Sequence[str]) -> list[Rec]:
    values = [encode_changes([(a, 1)], per_record=1)[0] for a in artifact_ids]
    return [Rec(TOPIC, partition, first_offset + i, v) for i, v in enumerate(values)]


@dataclass
class Journal:
    """Everything the fakes saw, in order."""

    events: list[tuple[str, Any]] = field(default_factory=list)


class FakeIO:
    def __init__(self, batches: list[list[Rec]], journal: Journal, stopping: asyncio.Event):
        self.batches, self.journal, self.stopping = batches, journal, stopping
        self.producer = FakeProducer(journal)

    async def next_batch(self) -> list[Rec]:
        if self.batches:
            return self.batches.pop(0)
        self.stopping.set()  # the stream is consumed: a clean stop
        return []

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        assert offsets is not None, "a pipelined worker commits explicit offsets"
        self.journal.events.append(("commit", dict(offsets)))


class FakeProducer:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[None]:
        self.journal.events.append(("publish", dict(kwargs["headers"])["alert_id"].decode()))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeEvaluator:
    artifacts, collections = "artifacts", "collections"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.evaluated = asyncio.Event()  # set when the second batch is being evaluated
        self.calls = 0

    async def wait_visible(self, changed: dict[str, dict[str, int]]) -> None:
        return None

    async def evaluate(
        self, searches: Sequence[SavedSearch], ids: Sequence[str], collection_ids: Sequence[str]
    ) -> list[Match]:
        self.calls += 1
        self.journal.events.append(("evaluate", sorted(ids)))
        if self.calls == 2:
            self.evaluated.set()
        return [
            Match(alert_id(SEARCH.id, SEARCH.fingerprint, a, 1), SEARCH.id, a, 1, 1, {"id": a})
            for a in ids
        ]


class FakeStore:
    async def all(self) -> list[SavedSearch]:
        return [SEARCH]

    async def ids(self) -> set[str]:
        return {SEARCH.id}


class FakeLedger:
    """Claims every alert once; the first batch's claim waits for the second batch's
    evaluation (so it can only finish if the two overlap)."""

    def __init__(self, journal: Journal, evaluator: FakeEvaluator) -> None:
        self.journal, self.evaluator = journal, evaluator
        self.claimed: set[str] = set()

    async def claim(self, messages: Sequence[AlertMessage], now_us: int) -> list[Claimed]:
        if not self.claimed:
            await asyncio.wait_for(self.evaluator.evaluated.wait(), timeout=5)
        fresh = [m for m in messages if m.alert_id not in self.claimed]
        self.claimed |= {m.alert_id for m in fresh}
        self.journal.events.append(("claim", sorted(m.artifact_id for m in fresh)))
        return [Claimed(m, 1, 1, now_us) for m in fresh]

    async def mark_published(self, claims: Sequence[Claimed]) -> None:
        self.journal.events.append(("mark", sorted(c.message.artifact_id for c in claims)))

    async def take_abandoned(self, now_us: int) -> list[Claimed]:
        return []

    async def prune(self, live: Any, orphans_before: int, older_than: int | None) -> int:
        return 0


def _worker(batches: list[list[Rec]]) -> tuple[AlertWorker, Journal, asyncio.Event]:
    journal, stopping = Journal(), asyncio.Event()
    evaluator = FakeEvaluator(journal)
    worker = AlertWorker(
        KafkaSettings(),
        AlertsSettings(),
        evaluator,  # type: ignore[arg-type]
        FakeStore(),  # type: ignore[arg-type]
        FakeLedger(journal, evaluator),  # type: ignore[arg-type]
    )
    worker.io = FakeIO(batches, journal, stopping)  # type: ignore[assignment]
    return worker, journal, stopping


def test_next_offsets_are_the_last_offset_plus_one_per_partition() -> None:
    records = [*batch(0, 10, ["a", "b"]), *batch(1, 3, ["c"]), *batch(0, 12, ["d"])]
    assert next_offsets(records) == {  # type: ignore[arg-type]
        TopicPartition(TOPIC, 0): 13,
        TopicPartition(TOPIC, 1): 4,
    }


def test_deliveries_overlap_the_next_evaluation_and_commit_in_order() -> None:
    first = batch(0, 0, ["a1", "a2"])
    second = [*batch(0, 2, ["a3"]), *batch(1, 0, ["a2", "a4"])]  # a2 again: one alert
    third = batch(1, 2, ["a5"])
    worker, journal, stopping = _worker([first, second, third])

    asyncio.run(asyncio.wait_for(worker.run(stopping), timeout=20))

    events = journal.events
    # the first claim waited for the second evaluation: it ran while batch 1 was delivered
    assert events.index(("evaluate", ["a2", "a3", "a4"])) < events.index(("claim", ["a1", "a2"]))
    published = [e[1] for e in events if e[0] == "publish"]
    want = [alert_id(SEARCH.id, SEARCH.fingerprint, a, 1) for a in ("a1", "a2", "a3", "a4", "a5")]
    assert published == want  # in batch order, a2 once
    commits = [e[1] for e in events if e[0] == "commit"]
    assert commits == [
        {TopicPartition(TOPIC, 0): 2},
        {TopicPartition(TOPIC, 0): 3, TopicPartition(TOPIC, 1): 2},
        {TopicPartition(TOPIC, 1): 3},
    ]
    # each commit follows the mark of its own batch's alerts
    for marked, commit in ((["a1", "a2"], 0), (["a3", "a4"], 1), (["a5"], 2)):
        mark_at = events.index(("mark", marked))
        commit_at = [i for i, e in enumerate(events) if e[0] == "commit"][commit]
        assert mark_at < commit_at
    assert worker.batches == 3 and worker.published == 5


def test_a_failed_delivery_commits_nothing_after_it() -> None:
    worker, journal, stopping = _worker([batch(0, 0, ["a1"]), batch(0, 1, ["a2"])])

    async def broken(claims: Sequence[Claimed]) -> None:
        raise RuntimeError("not retried: a bug stops the worker")

    worker.ledger.mark_published = broken  # type: ignore[method-assign]

    async def main() -> None:
        try:
            await asyncio.wait_for(worker.run(stopping), timeout=20)
        except RuntimeError:
            return
        raise AssertionError("the delivery's failure must stop the worker")

    asyncio.run(main())
    assert [e for e in journal.events if e[0] == "commit"] == []

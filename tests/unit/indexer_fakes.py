"""In-memory fakes of the indexer's adapters, faithful to the semantics it relies on.

`FakeIndex` behaves like Elasticsearch's external versioning: a write lands only with a
version greater than the stored one (otherwise it counts as superseded, a 409). It can
also fail on demand, after some writes of a request landed, like a bulk cut short.
`FakeEpochs` is the control index's compare-and-set counter.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from indexer.collections import Member
from indexer.local import LocalRecord
from indexer.runtime import Processor
from indexer.step import Poison, Topology
from indexer.store import MemoryStore, Store
from indexer.writer import Versioned, WriteStats
from services.config import KafkaSettings
from services.errors import TransientError

KAFKA = KafkaSettings()


@dataclass
class FakeIndex:
    """Documents by (index, id) with their external versions."""

    docs: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    fail_after: int | None = None  # raise TransientError after this many writes land
    writes: int = 0
    superseded: int = 0
    pauses: int = 0  # yield to the event loop this many times per request (a slow index)

    async def write(self, writes: Sequence[Versioned]) -> WriteStats:
        for _ in range(self.pauses):
            await asyncio.sleep(0)
        stats = WriteStats()
        for item in writes:
            if self.fail_after is not None:
                if self.fail_after <= 0:
                    self.fail_after = None
                    raise TransientError("injected: the bulk request was cut short")
                self.fail_after -= 1
            current = self.docs.get((item.index, item.doc_id))
            if current is not None and current[0] >= item.version:
                stats.superseded += 1
                self.superseded += 1
                continue
            self.docs[(item.index, item.doc_id)] = (item.version, item.source)
            stats.written += 1
            self.writes += 1
        return stats

    def sources(self, index: str, live_only: bool = True) -> dict[str, dict[str, Any]]:
        """id -> source of one index (only `live: true` documents by default)."""
        return {
            doc_id: source
            for (name, doc_id), (_, source) in self.docs.items()
            if name == index and (source.get("live") or not live_only)
        }


@dataclass
class FakeEpochs:
    """The control index's per-partition counters."""

    counters: dict[tuple[str, int], int] = field(default_factory=dict)
    control: str = "control-1"

    async def acquire(self, topic: str, partition: int) -> tuple[int, str]:
        epoch = self.counters.get((topic, partition), 0) + 1
        self.counters[(topic, partition)] = epoch
        return epoch, self.control


@dataclass
class Replica:
    """A processor in local mode (member records folded in-process) over fakes."""

    index: FakeIndex
    epochs: FakeEpochs
    store: Store = field(default_factory=MemoryStore)
    partitions: int = 3
    member_partitions: int = 2
    local_members: bool = True
    search_text: bool = True
    defer: bool = False  # steps told they are behind mark their documents for later
    poison: list[Poison] = field(default_factory=list)
    published: list[tuple[int, Member]] = field(default_factory=list)

    def __post_init__(self) -> None:
        topology = Topology(
            parents={t: e for t, e in KAFKA.entity_by_topic().items() if e != "artifact"},
            artifacts=KAFKA.topic_for("artifact"),
            members=KAFKA.members_topic,
            member_partitions=self.member_partitions,
            local_members=self.local_members,
            search_text=self.search_text,
        )

        async def dead(item: Poison) -> None:
            self.poison.append(item)

        async def publish(members: Sequence[tuple[int, Member]]) -> None:
            self.published.extend(members)

        self.processor = Processor(
            self.store,
            topology,
            self.index,
            self.epochs,
            {"artifact": "artifacts", "collection": "collections"}.__getitem__,
            publish,
            dead,
            rewrite_budget=7,
            retry_initial_s=0.001,
            retry_max_s=0.001,
            defer_lag=1 if self.defer else 0,
            defer_max_s=math.inf,  # only `behind` decides: deterministic
        )

    def own_all(self) -> None:
        """Take every artifact and member partition."""
        self.processor.assigned(
            [(KAFKA.topic_for("artifact"), p) for p in range(self.partitions)]
            + [(KAFKA.members_topic, q) for q in range(self.member_partitions)]
        )

    async def feed(self, records: Sequence[LocalRecord], batch: int = 50) -> None:
        """Process `records` in steps of `batch`, then drain marks and rewrites. Each step
        is told how many of `records` wait behind it (with `defer`, all but the last step
        mark their documents instead of writing them)."""
        for start in range(0, len(records), batch):
            behind = max(len(records) - start - batch, 0)
            await self.processor.process(records[start : start + batch], behind)
        while await self.processor.drain() is not None:
            pass


def number(
    items: Iterable[tuple[str, bytes | None, bytes | None]], partitions: int = 3
) -> list[LocalRecord]:
    """(entity, key, value) tuples as records with Kafka-like partitions and offsets."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for entity, key, value in items:
        topic = KAFKA.topic_for(entity)
        partition = zlib.crc32(key or b"") % partitions
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(LocalRecord(topic, partition, offset, key, value))
    return out


def member_records(published: Sequence[tuple[int, Member]], start: int = 0) -> list[LocalRecord]:
    """Member records as the member topic would deliver them (offsets from `start`)."""
    import orjson

    offsets: dict[int, int] = {}
    out = []
    for q, member in published:
        offset = offsets.get(q, start)
        offsets[q] = offset + 1
        out.append(
            LocalRecord(
                KAFKA.members_topic,
                q,
                offset,
                member.record_key(),
                orjson.dumps(member.encode()),
            )
        )
    return out

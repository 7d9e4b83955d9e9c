"""The indexer without Kafka consumers: one owner of every partition, in-process.

`replay` and the tests that load datasets directly use it. Member records are folded in
the same step instead of travelling through the member topic (there is only one owner),
every artifact partition is owned from the start, and epochs still come from the control
index, so documents written this way are fenced like any other.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from elasticsearch import AsyncElasticsearch

from indexer.runtime import Processor, StepResult
from indexer.step import Poison, RecordLike, Topology
from indexer.store import MemoryStore, Store
from indexer.writer import BulkWriter, ControlEpochs
from services.config import IndexerSettings, KafkaSettings
from services.es.indices import IndexNames


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """A record as the indexer sees it (what aiokafka's `ConsumerRecord` carries)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass
class LocalPipeline:
    """A `Processor` that owns every partition, fed records directly."""

    es: AsyncElasticsearch
    names: IndexNames
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    store: Store = field(default_factory=MemoryStore)
    partitions: int | list[int] = 3
    member_partitions: int = 1
    group: str = "local"
    settings: IndexerSettings = field(default_factory=lambda: IndexerSettings(instance_id="local"))
    poison: list[Poison] = field(default_factory=list)
    _offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entity_by_topic = self.kafka.entity_by_topic()
        self.artifact_topic = self.kafka.topic_for("artifact")
        topology = Topology(
            parents={t: e for t, e in entity_by_topic.items() if e != "artifact"},
            artifacts=self.artifact_topic,
            members=self.kafka.members_topic,
            member_partitions=self.member_partitions,
            local_members=True,
            search_text=self.settings.search_text,
        )
        index_of = {"artifact": self.names.artifacts, "collection": self.names.collections}

        async def collect(item: Poison) -> None:
            self.poison.append(item)

        settings = self.settings
        self.processor = Processor(
            self.store,
            topology,
            BulkWriter(self.es, settings.bulk_chunk, settings.bulk_concurrency),
            ControlEpochs(self.es, self.names.control, self.group),
            index_of.__getitem__,
            None,
            collect,
            max_event_bytes=settings.max_event_bytes,
            rewrite_budget=settings.rewrite_budget,
            cache_entries=settings.state_cache_entries,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
        )
        owned = (
            list(range(self.partitions)) if isinstance(self.partitions, int) else self.partitions
        )
        self.count = len(owned) if isinstance(self.partitions, list) else self.partitions
        self.processor.assigned(
            [(self.artifact_topic, p) for p in owned]
            + [(self.kafka.members_topic, q) for q in range(self.member_partitions)]
        )

    def records(self, items: Iterable[tuple[str, bytes | None, bytes | None]]) -> list[LocalRecord]:
        """Number (entity, key, value) tuples as records: partition by key, next offsets."""
        out = []
        for entity, key, value in items:
            topic = self.kafka.topic_for(entity)
            partition = zlib.crc32(key or b"") % self.count
            offset = self._offsets.get((topic, partition), 0)
            self._offsets[(topic, partition)] = offset + 1
            out.append(LocalRecord(topic, partition, offset, key, value))
        return out

    async def apply(self, records: Sequence[RecordLike]) -> StepResult:
        """One step over `records`."""
        return await self.processor.process(records)

    async def load(
        self, items: Sequence[tuple[str, bytes | None, bytes | None]], batch: int = 5_000
    ) -> None:
        """Number and apply (entity, key, value) tuples in batches of `batch`."""
        records = self.records(items)
        for start in range(0, len(records), batch):
            await self.apply(records[start : start + batch])
        await self.finish()

    async def finish(self) -> None:
        """Run steps without records until no mark or rewrite is left."""
        while await self.processor.drain() is not None:
            pass

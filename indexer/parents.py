"""The global table: every replica reads all partitions of the four parent topics.

A group-less aiokafka consumer (Kafka Streams' GlobalKTable), sought to the positions in
the store. At start-up it catches up to the topics' ends before the group subscriber joins
(the global restore); afterwards a pump task keeps applying parent records, and the group
handler holds artifact batches while the parents lag (`hold`), so artifacts find them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from indexer import metrics
from indexer.runtime import Processor
from services.config import IndexerSettings, KafkaSettings
from services.errors import PermanentError
from services.kafka import commit_offsets, producer_kwargs

log = logging.getLogger("indexer.parents")

Submit = Callable[[AIOKafkaConsumer, Sequence[Any]], Awaitable[bool]]


class Parents:
    """Reads the parent topics into the processor; `submit` is the indexer's step hand-off."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: IndexerSettings,
        topics: Sequence[str],
        processor: Processor,
        submit: Submit,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.topics = list(topics)
        self.processor = processor
        self.submit = submit
        self.consumer: AIOKafkaConsumer | None = None
        self.running = True

    async def start(self) -> None:
        """Assign every parent partition, sought to the store's positions."""
        consumer = AIOKafkaConsumer(
            **producer_kwargs(self.kafka),
            group_id=f"{self.kafka.group_id}.global.{self.settings.instance_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.settings.max_partition_fetch_bytes,
        )
        await consumer.start()
        self.consumer = consumer
        tps = []
        for topic in self.topics:
            partitions = consumer.partitions_for_topic(topic)
            for _ in range(50):
                if partitions:
                    break
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    await asyncio.sleep(0.2)
            if not partitions:
                raise PermanentError(f"topic {topic} does not exist: run `bootstrap` first")
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        positions = {tp: self.processor.position(tp.topic, tp.partition) for tp in tps}
        for tp, position in positions.items():
            consumer.seek(tp, position)
        await commit_offsets(consumer, positions)  # monitoring shows the store's positions
        for tp, end in (await consumer.end_offsets(tps)).items():
            self.processor.suspect_below((tp.topic, tp.partition), end)

    async def stop(self) -> None:
        """Stop reading."""
        self.running = False
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def catch_up(self) -> None:
        """Apply the parent topics up to their ends as of now (the global restore)."""
        consumer, processor = self.consumer, self.processor
        assert consumer is not None
        ends = await consumer.end_offsets(list(consumer.assignment()))
        behind = {
            tp for tp, end in ends.items() if processor.position(tp.topic, tp.partition) < end
        }
        while behind and self.running:
            batch = await consumer.getmany(timeout_ms=500, max_records=self.settings.max_batch)
            records = [r for rs in batch.values() for r in rs]
            if records:
                if not await self.submit(consumer, records):
                    return
                await processor.flush()
            behind = {tp for tp in behind if processor.position(tp.topic, tp.partition) < ends[tp]}
        log.info("parents caught up")

    async def pump(self) -> None:
        """Keep applying parent records; idle time drains rewrites and marks."""
        consumer, processor = self.consumer, self.processor
        assert consumer is not None
        while self.running:
            try:
                batch = await consumer.getmany(
                    timeout_ms=self.settings.batch_timeout_ms, max_records=self.settings.max_batch
                )
                records = [r for rs in batch.values() for r in rs]
                if records:
                    await self.submit(consumer, records)
                elif processor.has_work():
                    await self.submit(consumer, [])  # activations, marks, rewrites
            except asyncio.CancelledError:
                raise
            except Exception:  # the consumer itself failed: it resumes where it stood
                log.exception("reading the parent topics failed; retrying")
                await asyncio.sleep(self.settings.retry_max_s)

    def lag(self) -> int:
        """Parent records fetched or fetchable but not yet applied (committed), all partitions."""
        consumer = self.consumer
        if consumer is None:
            return 0
        lag = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag += max(highwater - self.processor.position(tp.topic, tp.partition), 0)
        return lag

    async def hold(self) -> None:
        """Wait while the parents lag (a backlog): artifacts then find their parents and are
        written once instead of once more per parent that arrives later. Bounded."""
        limit = self.settings.parents_first_lag
        if not limit:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.parents_first_max_s
        while self.lag() > limit and loop.time() < deadline and self.running:
            metrics.ARTIFACTS_HELD.set(1)
            await asyncio.sleep(0.05)
        metrics.ARTIFACTS_HELD.set(0)

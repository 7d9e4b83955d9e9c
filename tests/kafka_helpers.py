"""Test helper: what tests and benchmarks read of, and set in, a real Kafka broker.

Partitions of a topic (waiting for its metadata), end offsets, and a consumer group's
offsets committed by hand (what `kafka-consumer-groups --reset-offsets` does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of `topic`, once the consumer's metadata knows it (bounded wait)."""
    for _ in range(50):
        await consumer._client.force_metadata_update()  # no public way to wait for metadata
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no partitions for {topic}")


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """The end offset of every partition of `topics`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or await partitions(consumer, t))
        ]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def commit_group(bootstrap: str, group: str, offsets: Mapping[TopicPartition, int]) -> None:
    """Commit `offsets` for `group` (its members must be stopped)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()

"""Kafka helpers of the benchmark: topics, publishing, end offsets and the indexer's lag."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_fixed

from services.config import KafkaSettings
from services.contract import ENTITIES
from services.kafka import send_records
from tests import kafka_helpers

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def kafka_settings(prefix: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=KAFKA, topic_prefix=prefix, group_id=prefix + "indexer")


async def create_topics(kafka: KafkaSettings) -> list[str]:
    """The five entity topics, the dead letters and the indexer's member topic (compacted,
    created here so its offsets can be watched from the start); the member topic is last."""
    topics = [kafka.topic_for(e) for e in ENTITIES] + [kafka.dlq_topic]
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        members = NewTopic(
            kafka.members_topic,
            kafka.partitions,
            1,
            topic_configs={"cleanup.policy": "compact", "max.message.bytes": "8388608"},
        )
        await admin.create_topics([NewTopic(t, kafka.partitions, 1) for t in topics] + [members])
    finally:
        await admin.close()
    return [*topics, kafka.members_topic]


async def delete_topics(topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def make_producer() -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA, acks="all", linger_ms=5, max_batch_size=262_144
    )
    await producer.start()
    return producer


async def publish(
    producer: AIOKafkaProducer, kafka: KafkaSettings, records: Sequence[tuple[str, bytes, Any]]
) -> None:
    await send_records(producer, kafka, records)


async def lag(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    ends: dict[Any, int],
    instances: Sequence[str] = ("bench-0",),
) -> int:
    """Records not yet applied: artifacts and members by the group, parents by every
    replica (each commits its copy of the parent topics under `<group>.global.<id>`)."""

    async def committed(group: str) -> dict[Any, int]:
        # a broker just started has no group coordinator until its offsets topic exists
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, KafkaError) and e.retriable),
            stop=stop_after_delay(60),
            wait=wait_fixed(0.5),
            reraise=True,
        ):
            with attempt:
                got = await admin.list_consumer_group_offsets(group)
        return {tp: m.offset for tp, m in got.items() if m.offset >= 0}

    grouped = {kafka.topic_for("artifact"), kafka.members_topic}
    group = await committed(kafka.group_id)
    parents = [await committed(f"{kafka.group_id}.global.{i}") for i in instances]
    total = 0
    for tp, end in ends.items():
        if tp.topic in grouped:
            total += max(end - group.get(tp, 0), 0)
        else:
            total += max((max(end - p.get(tp, 0), 0) for p in parents), default=end)
    return total


async def end_offsets(topics: list[str]) -> dict[Any, int]:
    return await kafka_helpers.end_offsets(KAFKA, topics)

"""Create Kafka topics that a component owns, if they are missing (idempotent)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from services.config import KafkaSettings
from services.kafka import producer_kwargs


async def ensure_topics(kafka: KafkaSettings, topics: Sequence[str]) -> list[str]:
    """Create the missing ones of `topics` (KAFKA_PARTITIONS, KAFKA_REPLICATION_FACTOR);
    return those created."""
    admin = AIOKafkaAdminClient(**producer_kwargs(kafka), request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [t for t in dict.fromkeys(topics) if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(t, kafka.partitions, kafka.replication_factor) for t in new]
                )
        return new
    finally:
        await admin.close()

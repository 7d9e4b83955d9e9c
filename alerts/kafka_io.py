"""Kafka adapter shared by the alerts worker and the webhook dispatcher: one consumer with
manual commits and one producer, started, polled, committed and stopped together.

Both loops of `artifact-search alerts` have the same shape — consume a batch, do the work,
produce what follows from it, then commit — so the connection lifecycle lives here once.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from services.config import KafkaSettings
from services.kafka import producer_kwargs

log = logging.getLogger("alerts.kafka")

Record: TypeAlias = "ConsumerRecord[Any, Any]"


def next_offsets(records: list[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit once `records` are done: per partition, the last one + 1."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out


class ConsumeProduce:
    """A consumer of `topic` in `group_id` (offsets committed by `commit()` only) and a
    producer with `producer_options` (e.g. idempotence)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group_id: str,
        max_batch: int,
        **producer_options: Any,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.group_id = group_id
        self.max_batch = max_batch
        self.producer_options = producer_options
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Start the producer, then the consumer (earliest offset for a new group)."""
        self._producer = AIOKafkaProducer(
            **producer_kwargs(self.kafka), acks="all", **self.producer_options
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            self.topic,
            **producer_kwargs(self.kafka),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_batch,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        """Stop both (what was consumed but not committed is redelivered)."""
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            await consumer.stop()
        if producer is not None:
            await producer.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        """The started producer."""
        assert self._producer is not None, "not started"
        return self._producer

    async def next_batch(self, timeout_ms: int = 200) -> list[Record]:
        """The next records (all partitions), or none after `timeout_ms`."""
        assert self._consumer is not None, "not started"
        fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_batch)
        return [r for batch in fetched.values() for r in batch]

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit `offsets` (the next offset to read per partition), or else what was
        consumed. A refused commit (the group rebalanced meanwhile) is not an error: the new
        owner is redelivered the batch, which the callers tolerate."""
        assert self._consumer is not None, "not started"
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError:
            log.info("offset commit refused after a rebalance; the batch will be redelivered")
        except KafkaError as exc:
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)

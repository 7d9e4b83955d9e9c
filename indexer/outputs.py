"""The Kafka topics the indexer writes: its member topic and the dead letters.

Two producers: member records carry whole artifacts, so their producer (and the member
topic) accept large messages and are filled one batch per partition; dead letters use
Kafka's default sizes, so a record the broker or producer refuses is re-sent truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from pydantic import BaseModel, Field
from tenacity import AsyncRetrying, retry_if_result, stop_after_delay, wait_exponential

from indexer import metrics
from indexer.collections import Member
from indexer.step import Poison
from services.config import KafkaSettings
from services.errors import PermanentError, TransientError
from services.kafka import producer_kwargs

log = logging.getLogger("indexer.outputs")

MEMBER_BATCH_BYTES = 512 * 1024
MEMBER_MAX_BYTES = 8 * 1024 * 1024
"""Member records carry an artifact's fields, so they are as large as its event (at most
`INDEXER_MAX_EVENT_BYTES`): the producer and the member topic accept up to this size."""

DLQ_TRUNCATED_VALUE_BYTES = 65_536
"""A dead letter refused as too large is re-sent with its value cut to this many bytes."""


def dlq_headers(item: Poison) -> list[tuple[str, bytes | None]]:
    """Headers describing the error and the record's source, plus the original headers."""
    rec = item.record
    headers: list[tuple[str, bytes | None]] = [
        ("dlq.reason", item.reason.encode()),
        ("dlq.detail", item.detail.encode("utf-8", "replace")[:2000]),
        ("dlq.topic", rec.topic.encode()),
        ("dlq.partition", str(rec.partition).encode()),
        ("dlq.offset", str(rec.offset).encode()),
    ]
    for name, value in getattr(rec, "headers", None) or ():
        headers.append((f"original.{name}", value))
    return headers


class MemberRecord(BaseModel):
    """The value of an internal member record (documentation of `Member.encode`)."""

    k: str = Field(description="the artifact's key (the collection)")
    a: str = Field(description="the artifact id")
    o: int = Field(description="offset of the artifact record this state follows")
    l: bool = Field(description="whether the artifact is a live member of the key")  # noqa: E741
    p: dict[str, Any] | None = Field(description="the artifact's own fields when live")


class KafkaOutputs:
    """The member topic and the dead-letter topic, for one indexer process."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.artifact_topic = kafka.topic_for("artifact")
        self.members_topic = kafka.members_topic
        self._producer: AIOKafkaProducer | None = None  # member records (large, batched)
        self._dlq: AIOKafkaProducer | None = None  # dead letters (Kafka's default sizes)

    async def start(self) -> None:
        """Start both producers."""
        self._producer = AIOKafkaProducer(
            **producer_kwargs(self.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=MEMBER_BATCH_BYTES,
            max_request_size=MEMBER_MAX_BYTES,
        )
        await self._producer.start()
        self._dlq = AIOKafkaProducer(**producer_kwargs(self.kafka), acks="all")
        await self._dlq.start()

    async def stop(self) -> None:
        """Flush and stop both producers."""
        for producer in (self._producer, self._dlq):
            if producer is not None:
                await producer.stop()
        self._producer = self._dlq = None

    async def member_partitions(self) -> int:
        """Create the member topic (as many partitions as the artifact topic) if missing.

        A topic just created can be described with no partitions (or not at all) until the
        controller's metadata reaches the broker that answers: its count is read again until
        it has some, never taken as 0 (every member partition is a modulus)."""
        admin = AIOKafkaAdminClient(**producer_kwargs(self.kafka), request_timeout_ms=15_000)
        await admin.start()
        try:
            return await ensure_member_topic(
                admin, self.artifact_topic, self.members_topic, self.kafka
            )
        finally:
            await admin.close()

    def _producer_or_fail(self) -> AIOKafkaProducer:
        assert self._producer is not None, "the indexer is not started"
        return self._producer

    async def publish_members(self, members: Sequence[tuple[int, Member]]) -> None:
        """Publish member records in one batch per partition (much cheaper than one `send`
        each); any Kafka error is transient: the whole set is re-sent, which is harmless."""
        producer = self._producer_or_fail()
        by_partition: dict[int, list[Member]] = {}
        for q, member in members:
            by_partition.setdefault(q, []).append(member)
        try:
            futures = []
            for q, items in by_partition.items():
                batch = producer.create_batch()
                for member in items:
                    key, value = member.record_key(), orjson.dumps(member.encode())
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        if batch.record_count():
                            futures.append(
                                await producer.send_batch(batch, self.members_topic, partition=q)
                            )
                            batch = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            futures.append(  # larger than a batch: on its own
                                await producer.send(
                                    self.members_topic, value=value, key=key, partition=q
                                )
                            )
                if batch.record_count():
                    futures.append(
                        await producer.send_batch(batch, self.members_topic, partition=q)
                    )
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise TransientError(f"publishing member records failed: {exc}") from exc

    async def dead_letter(self, item: Poison) -> None:
        """Publish one poison record to the dead-letter topic; never give up silently.

        A record the producer or broker refuses as too large is re-sent truncated (value cut
        to `DLQ_TRUNCATED_VALUE_BYTES`, key to 1 KiB, without its original headers, with
        `dlq.truncated` = the original value size), then as headers only; any other Kafka
        error is raised as transient: the processor retries it with backoff, stalling the
        partition visibly instead.
        """
        rec = item.record
        log.warning(
            "dead-lettering record",
            extra={"reason": item.reason, "topic": rec.topic, "offset": rec.offset},
        )
        own = dlq_headers(item)
        truncated = [*own, ("dlq.truncated", str(len(rec.value or b"")).encode())]
        dlq_only = [h for h in truncated if h[0].startswith("dlq.")]
        attempts: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
            (rec.value, rec.key, own),
            (
                None if rec.value is None else rec.value[:DLQ_TRUNCATED_VALUE_BYTES],
                None if rec.key is None else rec.key[:1024],
                dlq_only,
            ),
            (None, None, dlq_only),
        ]
        for value, key, headers in attempts:
            try:
                assert self._dlq is not None, "the indexer is not started"
                await self._dlq.send_and_wait(
                    self.kafka.dlq_topic, value=value, key=key, headers=headers
                )
                metrics.DLQ.labels(reason=item.reason).inc()
                return
            except MessageSizeTooLargeError:
                log.warning("dead letter too large, re-sending it truncated")
            except KafkaError as exc:  # the processor retries with backoff (tenacity)
                raise TransientError(f"dead-letter publish failed: {exc}") from exc
        raise PermanentError("the dead-letter topic refused even the headers of a record")


async def ensure_member_topic(
    admin: Any, artifact_topic: str, members_topic: str, kafka: KafkaSettings, wait_s: float = 60
) -> int:
    """The member topic's partition count, the topic created like the artifact topic first
    when missing (`admin`: an aiokafka admin client, or a fake with the same two calls)."""
    counts = await _partition_counts(admin, [artifact_topic, members_topic])
    if members_topic not in counts:
        partitions = counts.get(artifact_topic, kafka.partitions)
        topic = NewTopic(
            members_topic,
            partitions,
            kafka.replication_factor,
            topic_configs={
                "cleanup.policy": "compact",
                # a member record carries an artifact's fields: as large as its event
                "max.message.bytes": str(MEMBER_MAX_BYTES),
            },
        )
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([topic])
    counts = await AsyncRetrying(
        retry=retry_if_result(lambda found: members_topic not in found),
        stop=stop_after_delay(wait_s),
        wait=wait_exponential(multiplier=0.05, max=2),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else {},
    )(_partition_counts, admin, [members_topic])
    if members_topic not in counts:
        raise TransientError(
            f"the member topic {members_topic} has no partitions {wait_s:.0f} s after it was "
            "created: is the Kafka controller reachable?"
        )
    return int(counts[members_topic])


async def _partition_counts(admin: Any, topics: list[str]) -> dict[str, int]:
    """Partitions of each topic that exists and has some (absent: missing or not yet known)."""
    described = await admin.describe_topics(topics)
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if t.get("error_code") == 0 and t.get("partitions")
    }

"""Adapter: what an entity topic holds, read back from Kafka (for a `TRUNCATE`).

A `TRUNCATE` in Prefect's database carries no row ids, so the bridge asks its own output:
every record of the entity's topic from the beginning up to the end offsets taken when
it starts reading (the caller flushed its producer first, so everything it published
before is included), reduced to each id's latest (version, op). The topics are the
project's source of truth (ADR 0004: `replay` rebuilds the index from them), so they hold
every entity the index holds; the cost is one read of the topic per `TRUNCATE`, and a set
of its ids in memory (docs/adr/0007).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.config import KafkaSettings
from services.errors import BackendUnavailableError
from services.kafka import producer_kwargs
from services.sync.changes import latest_ops

log = logging.getLogger("sync")


async def read_latest(
    kafka: KafkaSettings, entity: str, between: Callable[[], None] = lambda: None
) -> dict[str, tuple[int, str]]:
    """Per entity id, the (version, op) of its highest-version event on `entity`'s topic;
    `between` is called after every fetch (the bridge keeps its replication stream alive)."""
    topic = kafka.topic_for(entity)
    consumer = AIOKafkaConsumer(
        **producer_kwargs(kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = await _partitions(kafka, topic)
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[tuple[str, int, str]] = []
        skipped = [0]
        remaining = {tp for tp in parts if end[tp] > 0}
        while remaining:
            data = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, msgs in data.items():
                records.extend(_parsed([m.value for m in msgs if m.offset < end[tp]], skipped))
            between()
            for tp in list(remaining):
                # compaction or transaction markers can leave no record at end - 1
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        if skipped[0]:
            log.warning("%s: %d records that are not event envelopes skipped", topic, skipped[0])
        return latest_ops(records)
    finally:
        await consumer.stop()


async def _partitions(kafka: KafkaSettings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(**producer_kwargs(kafka))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = [
        TopicPartition(topic, p["partition"])
        for t in described
        if t["topic"] == topic and not t.get("error_code")
        for p in t["partitions"]
    ]
    if not parts:
        raise BackendUnavailableError(f"cannot read topic {topic}: {described}")
    return sorted(parts)


def _parsed(values: list[bytes | None], skipped: list[int]) -> Iterator[tuple[str, int, str]]:
    """(entity id, version, op) of each envelope; anything else (which the indexer
    dead-letters: it names no entity the index holds) is counted in `skipped`."""
    for value in values:
        try:
            event = orjson.loads(value or b"")
            yield str(event["entity_id"]), int(event["version"]), str(event["op"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            skipped[0] += 1

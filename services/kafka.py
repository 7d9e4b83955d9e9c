"""Kafka from `KafkaSettings`: connection arguments for aiokafka/FastStream (TLS, SASL),
publishing ready-made records to the entity topics, and committing monitoring offsets."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from services.config import KafkaSettings

log = logging.getLogger("services.kafka")


def _security(settings: KafkaSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        out["sasl_plain_username"] = settings.sasl_username
        out["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return out


#: `max_batch_size` of producers that publish many records at once (a snapshot, a backfill):
#: aiokafka's default of 16 KiB costs a round trip every few dozen events
BULK_BATCH_BYTES = 512 * 1024


def producer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for `aiokafka.AIOKafkaProducer` / consumers / admin clients."""
    return {"bootstrap_servers": settings.bootstrap_servers, **_security(settings)}


def broker_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for `faststream.kafka.KafkaBroker`.

    FastStream takes TLS and SASL as one `security` object (it turns it back into the
    aiokafka arguments `producer_kwargs` gives), not as aiokafka's keyword arguments.
    """
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    sec = _security(settings)
    protocol = sec["security_protocol"]
    if protocol == "PLAINTEXT":
        return kwargs
    use_ssl = protocol in ("SSL", "SASL_SSL")
    context = sec.get("ssl_context")
    if protocol == "SSL":
        kwargs["security"] = BaseSecurity(ssl_context=context, use_ssl=True)
        return kwargs
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    kwargs["security"] = sasl[sec["sasl_mechanism"]](
        username=sec["sasl_plain_username"] or "",
        password=sec["sasl_plain_password"] or "",
        ssl_context=context,
        use_ssl=use_ssl,
    )
    return kwargs


async def publish_records(
    settings: KafkaSettings, records: Sequence[tuple[str, bytes, bytes | None]]
) -> None:
    """Publish `(entity, key, value)` records, each to its entity's topic (a None value is a
    tombstone), in order, and return once Kafka acknowledged all of them (acks=all)."""
    producer = AIOKafkaProducer(**producer_kwargs(settings), acks="all", linger_ms=20)
    await producer.start()
    try:
        await send_records(producer, settings, records)
    finally:
        await producer.stop()


async def send_records(
    producer: AIOKafkaProducer,
    settings: KafkaSettings,
    records: Sequence[tuple[str, bytes, bytes | None]],
) -> None:
    """Send the records with a started producer, at most 5,000 unacknowledged at a time, and
    return once every one is acknowledged."""
    batch = []
    for entity, key, value in records:
        batch.append(await producer.send(settings.topic_for(entity), value=value, key=key))
        if len(batch) >= 5000:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)


COMMIT_TIMEOUT_S = 10.0


async def commit_offsets(consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
    """Commit positions to Kafka, for monitoring only (the store holds the real ones): a
    refused or failed commit is logged, never raised."""
    if not positions:
        return
    try:
        await asyncio.wait_for(consumer.commit(positions), COMMIT_TIMEOUT_S)
    except CommitFailedError:
        log.info("commit refused after a rebalance (positions live in the store)")
    except (KafkaError, TimeoutError) as exc:
        log.warning("offset commit failed (%r); positions live in the store", exc)


class OffsetCommits:
    """Monitoring commits that keep up with any step rate: at most one commit per consumer
    is in flight; positions added meanwhile are merged (a later step's positions replace an
    earlier one's) and sent together when it returns. Nothing is awaited by `add`."""

    def __init__(self) -> None:
        self._pending: dict[AIOKafkaConsumer, dict[TopicPartition, int]] = {}
        self._running: dict[AIOKafkaConsumer, asyncio.Task[None]] = {}

    def add(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
        """Commit `positions` (of partitions still assigned when the commit is sent)."""
        if not positions:
            return
        self._pending.setdefault(consumer, {}).update(positions)
        if consumer not in self._running:
            self._running[consumer] = asyncio.create_task(self._run(consumer))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while pending := self._pending.pop(consumer, None):
                assigned = consumer.assignment()
                await commit_offsets(
                    consumer, {tp: p for tp, p in pending.items() if tp in assigned}
                )
        finally:
            del self._running[consumer]

    async def wait(self) -> None:
        """Until every position added so far was sent (or its commit failed and was logged)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

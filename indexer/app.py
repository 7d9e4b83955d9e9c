"""The indexer's composition root: FastStream over aiokafka, one batch subscriber.

Offsets are committed explicitly per partition, and only after `Engine.apply`
returned for the whole batch (every effect accepted by Elasticsearch) and every
poison record of the batch was published to the dead-letter topic. Batches are
processed one at a time, so the committed position of each partition is always
a contiguous watermark. FastStream's own acknowledgement is disabled
(`AckPolicy.MANUAL`): its batch `ack()` would commit every fetched position.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, MessageSizeTooLargeError
from elasticsearch import AsyncElasticsearch
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.specification import AsyncAPI

from indexer import metrics
from indexer.engine import Engine
from indexer.priority import artifact_partitions, hold_artifacts, parent_lag
from indexer.sink import Sink
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings
from services.contract import EVENT_MODELS, Event, parse_record
from services.errors import PoisonEventError, TransientError
from services.es.admin import ensure_indices
from services.es.client import make_es_client
from services.es.indices import IndexNames
from services.kafka import broker_kwargs, producer_kwargs

log = logging.getLogger("indexer")

DLQ_TRUNCATED_VALUE_BYTES = 65_536
"""A dead letter refused as too large is re-sent with its value cut to this many bytes."""


@dataclass(frozen=True)
class Poison:
    """A record to dead-letter, with why."""

    record: ConsumerRecord[Any, Any]
    reason: str
    detail: str


def split_batch(
    records: tuple[ConsumerRecord[Any, Any], ...], entity_by_topic: dict[str, str], max_bytes: int
) -> tuple[list[Event], list[Poison]]:
    """Parse records in order; poison ones are set aside with their reason."""
    events: list[Event] = []
    poison: list[Poison] = []
    for record in records:
        entity = entity_by_topic.get(record.topic)
        try:
            if entity is None:
                raise PoisonEventError("unknown_topic", f"no entity is mapped to {record.topic}")
            if record.value is not None and len(record.value) > max_bytes:
                raise PoisonEventError(
                    "oversized", f"value of {len(record.value)} bytes > {max_bytes}"
                )
            events.append(parse_record(entity, record.key, record.value))
        except PoisonEventError as exc:
            poison.append(Poison(record, exc.reason, exc.detail))
        except Exception as exc:  # a parser bug must not take the whole batch down with it
            log.exception("unexpected error parsing %s@%s", record.topic, record.offset)
            poison.append(Poison(record, "parse_error", f"{type(exc).__name__}: {exc}"))
    return events, poison


def dlq_headers(item: Poison) -> list[tuple[str, bytes]]:
    """Headers describing the error and the record's source, plus the original headers."""
    rec = item.record
    headers = [
        ("dlq.reason", item.reason.encode()),
        ("dlq.detail", item.detail.encode("utf-8", "replace")[:2000]),
        ("dlq.topic", rec.topic.encode()),
        ("dlq.partition", str(rec.partition).encode()),
        ("dlq.offset", str(rec.offset).encode()),
    ]
    for name, value in rec.headers or ():
        headers.append((f"original.{name}", value))
    return headers


def commit_positions(records: tuple[ConsumerRecord[Any, Any], ...]) -> dict[TopicPartition, int]:
    """The next offset to consume, per partition, after all of `records`."""
    out: dict[TopicPartition, int] = {}
    for rec in records:
        tp = TopicPartition(rec.topic, rec.partition)
        out[tp] = max(out.get(tp, 0), rec.offset + 1)
    return out


class Indexer:
    """Wires settings, Elasticsearch, the engine and the Kafka broker."""

    def __init__(
        self,
        kafka: KafkaSettings,
        es_settings: ElasticsearchSettings,
        settings: IndexerSettings,
    ) -> None:
        self.kafka = kafka
        self.es_settings = es_settings
        self.settings = settings
        self.names = IndexNames(es_settings.index_prefix)
        self.es: AsyncElasticsearch = make_es_client(es_settings)
        self.engine = Engine(
            Sink(self.es, self.names, settings.bulk_chunk, settings.bulk_concurrency)
        )
        self.entity_by_topic = kafka.entity_by_topic()
        self.broker = KafkaBroker(**broker_kwargs(kafka))
        self.stopping = asyncio.Event()
        self.batches = 0
        self._held_batches = 0
        self._release: asyncio.Task[None] | None = None
        self._register()

    def _register(self) -> None:
        subscriber = self.broker.subscriber(
            *self.entity_by_topic,
            batch=True,
            group_id=self.kafka.group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            max_records=self.settings.max_batch,
            batch_timeout_ms=self.settings.batch_timeout_ms,
            max_partition_fetch_bytes=self.settings.max_partition_fetch_bytes,
            max_poll_interval_ms=900_000,
            parser=_raw_parser,
            decoder=_raw_decoder,
        )
        subscriber(self.handle)
        self._producer: AIOKafkaProducer | None = None
        self._document_topics()

    def _document_topics(self) -> None:
        """Declare each topic's message schema for the AsyncAPI document (never published to)."""
        for topic, entity in self.entity_by_topic.items():
            self.broker.publisher(
                topic,
                title=f"{topic}:produce",
                description=(
                    f"Lifecycle events of `{entity}` entities, keyed by the entity id "
                    "(canonical lowercase UUID). A null value (tombstone) deletes the entity."
                ),
                schema=EVENT_MODELS[entity],
            )
        self.broker.publisher(
            self.kafka.dlq_topic,
            title=f"{self.kafka.dlq_topic}:dead-letters",
            description=(
                "Records the indexer could not apply: original key and value bytes, with "
                "headers dlq.reason, dlq.detail, dlq.topic, dlq.partition, dlq.offset."
            ),
            schema=bytes,
        )

    def _dlq_producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "the indexer is not started"
        return self._producer

    async def handle(self, body: Any, message: KafkaMessage) -> None:
        """Apply one batch, dead-letter its poison, then commit its positions."""
        records: tuple[ConsumerRecord[Any, Any], ...] = message.raw_message
        if not records:
            return
        events, poison = split_batch(records, self.entity_by_topic, self.settings.max_event_bytes)
        await self._apply_with_retry(events)
        for item in poison:
            log.warning(
                "dead-lettering record",
                extra={
                    "reason": item.reason,
                    "topic": item.record.topic,
                    "offset": item.record.offset,
                },
            )
            await self._dead_letter(item)
            metrics.DLQ.labels(reason=item.reason).inc()
        for event in events:
            metrics.EVENTS.labels(entity=event.entity).inc()
        consumer = cast(AIOKafkaConsumer, message.consumer)
        positions = commit_positions(records)
        try:
            await consumer.commit(positions)
        except CommitFailedError:
            log.warning("commit failed after a rebalance; the new owner re-applies (idempotent)")
        except KafkaError as exc:
            # the batch is applied; its positions are committed with the next batch's,
            # or re-consumed after a restart (idempotent)
            log.warning("commit failed (%s); positions will be committed later", exc)
        for tp, position in positions.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))
        await self._parents_first(consumer)
        self.batches += 1

    async def _parents_first(self, consumer: AIOKafkaConsumer) -> None:
        """Pause or resume the artifact partitions (indexer/priority.py)."""
        if self.settings.parents_first_lag == 0:
            return
        assigned = consumer.assignment()
        lags: dict[str, int] = {}
        for tp in assigned:
            if self.entity_by_topic.get(tp.topic) == "artifact":
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), timeout=1.0)
            except (TimeoutError, KafkaError, AssertionError):  # unknown yet: count as caught up
                continue
            lags[tp.topic] = lags.get(tp.topic, 0) + max(highwater - position, 0)
        hold = hold_artifacts(
            parent_lag(lags, self.entity_by_topic),
            self.settings.parents_first_lag,
            self._held_batches,
            self.settings.parents_first_max_batches,
        )
        pairs = artifact_partitions(
            ((tp.topic, tp.partition) for tp in assigned), self.entity_by_topic
        )
        artifacts = [TopicPartition(topic, partition) for topic, partition in pairs]
        if hold:
            consumer.pause(*artifacts)
            self._held_batches += 1
            if self._release is None or self._release.done():
                self._release = asyncio.create_task(self._release_when_idle(consumer, artifacts))
        else:
            consumer.resume(*artifacts)
            self._held_batches = 0
        metrics.ARTIFACTS_HELD.set(1 if hold else 0)

    async def _release_when_idle(
        self, consumer: AIOKafkaConsumer, artifacts: list[TopicPartition]
    ) -> None:
        """Resume the artifacts if no batch arrives while they are held.

        The parents' lag counts offsets, and some offsets carry no record (compaction,
        transaction markers): the lag may then never reach zero by consuming.
        """
        idle_s = max(1.0, 10 * self.settings.batch_timeout_ms / 1000)
        while self._held_batches:
            seen = self.batches
            await asyncio.sleep(idle_s)
            if self._held_batches and self.batches == seen:
                log.info("no batch while artifacts were held: resuming them")
                consumer.resume(*artifacts)
                self._held_batches = 0
                metrics.ARTIFACTS_HELD.set(0)

    async def _dead_letter(self, item: Poison) -> None:
        """Publish one poison record to the dead-letter topic; never give up silently.

        An exception escaping `handle` would be swallowed by FastStream and the next
        batch's commit would move past this record. So a record the producer or broker
        refuses as too large is re-sent truncated (value cut to
        `DLQ_TRUNCATED_VALUE_BYTES`, key to 1 KiB, without its original headers, with
        `dlq.truncated` = the original value size), then as headers only; any other Kafka
        error is retried with backoff, stalling the partition visibly instead.
        """
        rec = item.record
        own = dlq_headers(item)
        truncated = [*own, ("dlq.truncated", str(len(rec.value or b"")).encode())]
        attempts: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
            (rec.value, rec.key, own),
            (
                None if rec.value is None else rec.value[:DLQ_TRUNCATED_VALUE_BYTES],
                None if rec.key is None else rec.key[:1024],
                [h for h in truncated if h[0].startswith("dlq.")],
            ),
            (None, None, [h for h in truncated if h[0].startswith("dlq.")]),
        ]
        delay = self.settings.retry_initial_s
        while True:
            value, key, headers = attempts[0]
            try:
                await self._dlq_producer().send_and_wait(
                    self.kafka.dlq_topic, value=value, key=key, headers=headers
                )
                return
            except MessageSizeTooLargeError:
                if len(attempts) == 1:
                    raise
                log.warning("dead letter too large, re-sending it truncated")
                attempts.pop(0)
            except KafkaError as exc:
                metrics.RETRIES.inc()
                log.warning("dead-letter publish failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    async def _apply_with_retry(self, events: list[Event]) -> None:
        delay = self.settings.retry_initial_s
        while True:
            try:
                with metrics.BATCH_SECONDS.time():
                    stats = await self.engine.apply(events)
                metrics.BATCH_SIZE.observe(len(events))
                metrics.PROPAGATED.inc(stats.propagated)
                metrics.FANOUT_DOCUMENTS.observe(stats.propagated)
                metrics.FANOUT_SECONDS.observe(stats.seconds.get("propagate", 0.0))
                return
            except TransientError as exc:
                metrics.RETRIES.inc()
                log.warning("batch failed, retrying in %.1fs: %s", delay, exc)
            except Exception:
                # not classified: retrying stalls the partition visibly (retries metric, log),
                # while giving up would let the next batch's commit skip these events
                metrics.RETRIES.inc()
                log.exception("batch failed unexpectedly, retrying in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.retry_max_s)

    async def bootstrap(self) -> None:
        """Create indices and aliases if missing (idempotent)."""
        await ensure_indices(
            self.es,
            self.names,
            self.es_settings.number_of_shards,
            self.es_settings.number_of_replicas,
        )

    async def start(self) -> None:
        """Bootstrap indices, start the dead-letter producer, then consume."""
        await self.bootstrap()
        self._producer = AIOKafkaProducer(**producer_kwargs(self.kafka), acks="all")
        await self._producer.start()
        await self.broker.start()

    async def stop(self) -> None:
        """Stop consuming (a batch in flight is not committed), then close clients."""
        if self._release is not None:
            self._release.cancel()
        await self.broker.stop()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self.es.close()

    def app(self) -> FastStream:
        """The FastStream application to run (SIGTERM stops it gracefully)."""
        app = FastStream(self.broker, specification=specification(self.kafka))

        @app.on_startup
        async def _start() -> None:
            await self.bootstrap()
            self._producer = AIOKafkaProducer(**producer_kwargs(self.kafka), acks="all")
            await self._producer.start()

        @app.after_shutdown
        async def _close() -> None:
            if self._release is not None:
                self._release.cancel()
            if self._producer is not None:
                await self._producer.stop()
            await self.es.close()

        return app


def specification(kafka: KafkaSettings) -> AsyncAPI:
    """The AsyncAPI description of the topics this service consumes and produces."""
    return AsyncAPI(
        title="Prefect artifact search: lifecycle events v1",
        version="1.0.0",
        description=(
            "Producers publish flow, deployment, flow-run, task-run and artifact lifecycle "
            "events; the indexer consumes them. See docs/contract.md."
        ),
    )


def asyncapi_json(kafka: KafkaSettings | None = None) -> str:
    """The AsyncAPI document for default (or given) settings, as stable JSON."""
    settings = kafka or KafkaSettings(bootstrap_servers="kafka:9092")
    indexer = Indexer(settings, ElasticsearchSettings(), IndexerSettings())
    spec = indexer.app().schema.to_specification().to_jsonable()
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


async def _raw_parser(msg: Any, original: Any) -> Any:
    """Build the batch message without decoding headers (non-UTF-8 headers must not crash).

    FastStream decodes header values as UTF-8, so it is given sanitized copies; the handler
    still gets the untouched records, whose original header bytes go to the dead letters.
    """
    safe = []
    for rec in msg:
        if any(_bad_header(v) for _, v in (rec.headers or ())):
            fixed = [(k, v.decode("utf-8", "replace").encode()) for k, v in rec.headers]
            rec = dataclasses.replace(rec, headers=fixed)
        safe.append(rec)
    message = await original(tuple(safe))
    message.raw_message = tuple(msg)
    return message


def _bad_header(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


async def _raw_decoder(msg: Any, original: Any) -> Any:
    """Skip FastStream's body decoding: the handler parses raw bytes itself."""
    return None


__all__ = ["Indexer", "commit_positions", "dlq_headers", "split_batch"]

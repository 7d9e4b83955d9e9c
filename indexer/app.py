"""The indexer's composition root: FastStream over aiokafka, a store, Elasticsearch.

Two consumers feed one `Processor` (indexer/runtime.py):

- the **group** subscriber (FastStream, batch, `AckPolicy.MANUAL`) reads the artifact
  topic and the internal member topic; Kafka's group protocol shares their partitions
  among replicas. On assignment each partition is sought to the position saved in the
  store, not to the group's committed offset: the store is the source of truth, so a
  rewound group or a redelivered batch re-applies nothing;
- a **global** consumer (plain aiokafka, every partition assigned) reads the four parent
  topics into every replica, as a Kafka Streams GlobalKTable. It catches up to the end
  before the group subscriber starts, so a backlog of artifacts finds its parents.

Offsets are committed to Kafka after each step only for monitoring (lag): the group's
under `KAFKA_GROUP_ID`, the global consumer's under `<group>.global.<instance id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
)
from elasticsearch import AsyncElasticsearch
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.specification import AsyncAPI
from pydantic import BaseModel, Field

from indexer import metrics
from indexer.collections import Member
from indexer.runtime import PipelineError, Processor, StepResult
from indexer.step import Poison, Topology
from indexer.store import RocksStore, Store
from indexer.writer import BulkWriter, ControlEpochs
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings
from services.contract import EVENT_MODELS
from services.errors import PermanentError, TransientError
from services.es.admin import ensure_indices
from services.es.client import make_es_client
from services.es.indices import IndexNames
from services.kafka import broker_kwargs, producer_kwargs

log = logging.getLogger("indexer")

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


def _tps(records: Sequence[ConsumerRecord[Any, Any]]) -> set[TopicPartition]:
    return {TopicPartition(r.topic, r.partition) for r in records}


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the processor about assignments and seeks to the store's positions."""

    def __init__(self, indexer: Indexer) -> None:
        self.indexer = indexer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        processor = self.indexer.processor
        if processor is not None:
            processor.revoked([(tp.topic, tp.partition) for tp in revoked])
        metrics.ACTIVE_PARTITIONS.set(0 if processor is None else len(processor.active))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        processor = self.indexer.processor
        consumer = self.indexer.group_consumer()
        if processor is None or consumer is None:
            return
        processor.assigned([(tp.topic, tp.partition) for tp in assigned])
        for tp in assigned:
            consumer.seek(tp, processor.position(tp.topic, tp.partition))
        log.info("assigned %s", ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)))


class Indexer:
    """Wires settings, the store, Elasticsearch, the processor and both consumers."""

    def __init__(
        self,
        kafka: KafkaSettings,
        es_settings: ElasticsearchSettings,
        settings: IndexerSettings,
        store: Store | None = None,
    ) -> None:
        self.kafka = kafka
        self.es_settings = es_settings
        self.settings = settings
        self.names = IndexNames(es_settings.index_prefix)
        self.es: AsyncElasticsearch = make_es_client(es_settings)
        self.entity_by_topic = kafka.entity_by_topic()
        self.parent_topics = {t: e for t, e in self.entity_by_topic.items() if e != "artifact"}
        self.artifact_topic = kafka.topic_for("artifact")
        self.members_topic = kafka.members_topic
        self.broker = KafkaBroker(**broker_kwargs(kafka))
        self.processor: Processor | None = None
        self.batches = 0
        self.bootstrapped = asyncio.Event()
        self._store = store
        self._owns_store = store is None
        self._producer: AIOKafkaProducer | None = None  # member records (large, batched)
        self._dlq: AIOKafkaProducer | None = None  # dead letters (Kafka's default sizes)
        self._global: AIOKafkaConsumer | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()
        self.fatal: BaseException | None = None
        self._on_fatal: Callable[[], None] | None = None
        self._register()

    # -- wiring -------------------------------------------------------------------------
    def _register(self) -> None:
        self._subscriber = self.broker.subscriber(
            self.artifact_topic,
            self.members_topic,
            batch=True,
            group_id=self.kafka.group_id,
            group_instance_id=(
                self.settings.instance_id if self.settings.static_membership else None
            ),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            max_records=self.settings.max_batch,
            batch_timeout_ms=self.settings.batch_timeout_ms,
            max_partition_fetch_bytes=self.settings.max_partition_fetch_bytes,
            max_poll_interval_ms=900_000,
            listener=_Rebalance(self),
            parser=_raw_parser,
            decoder=_raw_decoder,
        )
        self._subscriber(self.handle)
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
        self.broker.publisher(
            self.members_topic,
            title=f"{self.members_topic}:internal",
            description=(
                "Internal to the indexer (do not produce): each artifact change repartitioned "
                "by the artifact's key, so one replica owns each collection. Compacted; keyed "
                "by `<collection id>:<artifact id>`; value "
                '`{"k": key, "a": artifact id, "o": source offset, "l": live, "p": fields}`.'
            ),
            schema=MemberRecord,
        )

    def group_consumer(self) -> AIOKafkaConsumer | None:
        """The group subscriber's aiokafka consumer, once started."""
        return getattr(self._subscriber, "consumer", None)

    # -- lifecycle ----------------------------------------------------------------------
    async def bootstrap(self) -> None:
        """Create indices, aliases and the member topic if missing (idempotent)."""
        await ensure_indices(
            self.es,
            self.names,
            self.es_settings.number_of_shards,
            self.es_settings.number_of_replicas,
        )

    async def _member_partitions(self) -> int:
        """Create the member topic (as many partitions as the artifact topic) if missing."""
        admin = AIOKafkaAdminClient(**producer_kwargs(self.kafka), request_timeout_ms=15_000)
        await admin.start()
        try:
            described = await admin.describe_topics([self.artifact_topic, self.members_topic])
            counts = {
                t["topic"]: len(t["partitions"]) for t in described if t.get("error_code") == 0
            }
            if self.members_topic not in counts:
                partitions = counts.get(self.artifact_topic, self.kafka.partitions)
                topic = NewTopic(
                    self.members_topic,
                    partitions,
                    self.kafka.replication_factor,
                    topic_configs={
                        "cleanup.policy": "compact",
                        # a member record carries an artifact's fields: as large as its event
                        "max.message.bytes": str(MEMBER_MAX_BYTES),
                    },
                )
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([topic])
                described = await admin.describe_topics([self.members_topic])
                counts = {t["topic"]: len(t["partitions"]) for t in described}
            return counts[self.members_topic]
        finally:
            await admin.close()

    def _open_store(self, member_partitions: int) -> Store:
        store = self._store or RocksStore(Path(self.settings.state_dir))
        identity = {
            "group": self.kafka.group_id,
            "artifacts": self.artifact_topic,
            "members": self.members_topic,
            "member_partitions": member_partitions,
            "index_prefix": self.names.prefix,
        }
        raw = store.get(b"M")
        if raw is None:
            store.commit({b"M": orjson.dumps(identity)})
        elif orjson.loads(raw) != identity:
            raise PermanentError(
                f"the state in {self.settings.state_dir} belongs to {orjson.loads(raw)}, "
                f"not to {identity}: point INDEXER_STATE_DIR at an empty directory (the "
                "state is rebuilt from the topics)"
            )
        return store

    async def start_processor(self) -> None:
        """Open the store, the producer and the processor; catch up the parents."""
        partitions = await self._member_partitions()
        store = self._open_store(partitions)
        self._store = store
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
        topology = Topology(
            parents=self.parent_topics,
            artifacts=self.artifact_topic,
            members=self.members_topic,
            member_partitions=partitions,
        )
        index_of = {"artifact": self.names.artifacts, "collection": self.names.collections}
        self.processor = Processor(
            store,
            topology,
            BulkWriter(self.es, self.settings.bulk_chunk, self.settings.bulk_concurrency),
            ControlEpochs(self.es, self.names.control, self.kafka.group_id),
            index_of.__getitem__,
            self._publish_members,
            self._dead_letter,
            max_event_bytes=self.settings.max_event_bytes,
            rewrite_budget=self.settings.rewrite_budget,
            retry_initial_s=self.settings.retry_initial_s,
            retry_max_s=self.settings.retry_max_s,
            depth=self.settings.pipeline_depth,
        )
        await self._start_global()
        await self._catch_up_parents()
        self._pump = asyncio.create_task(self._pump_parents(), name="indexer-parents")
        self.bootstrapped.set()

    async def start(self) -> None:
        """Bootstrap, catch up the parents, then consume the group topics."""
        await self.bootstrap()
        await self.start_processor()
        await self.broker.start()

    async def stop(self) -> None:
        """Stop consuming (a step in flight is not committed), then close everything."""
        await self.broker.stop()
        await self._close()

    async def _close(self) -> None:
        self._stopping = True
        if self.processor is not None and self.fatal is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.processor.flush(), self.settings.retry_max_s * 3)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        if self._global is not None:
            await self._global.stop()
            self._global = None
        for producer in (self._producer, self._dlq):
            if producer is not None:
                await producer.stop()
        self._producer = self._dlq = None
        if self._store is not None and self._owns_store:
            self._store.close()
            self._store = None
        await self.es.close()

    def app(self, first: Sequence[Callable[[], Awaitable[None]]] = ()) -> FastStream:
        """The FastStream application to run (SIGTERM stops it gracefully).

        `first` runs before anything else at start-up (the health server: liveness must
        answer while the parents are caught up, which can take minutes).
        """
        app = FastStream(self.broker, specification=specification(self.kafka))
        for hook in first:
            app.on_startup(hook)
        self._on_fatal = app.exit

        @app.on_startup
        async def _start() -> None:
            await self.bootstrap()
            await self.start_processor()

        @app.after_shutdown
        async def _close() -> None:
            await self._close()

        return app

    # -- the parents (global) -----------------------------------------------------------
    async def _start_global(self) -> None:
        consumer = AIOKafkaConsumer(
            **producer_kwargs(self.kafka),
            group_id=f"{self.kafka.group_id}.global.{self.settings.instance_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.settings.max_partition_fetch_bytes,
        )
        await consumer.start()
        self._global = consumer
        tps = []
        for topic in self.parent_topics:
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
        assert self.processor is not None
        for tp in tps:
            consumer.seek(tp, self.processor.position(tp.topic, tp.partition))

    async def _catch_up_parents(self) -> None:
        """Apply the parent topics up to their ends as of now (Kafka Streams' global restore)."""
        consumer = self._global
        assert consumer is not None and self.processor is not None
        ends = await consumer.end_offsets(list(consumer.assignment()))
        behind = {
            tp for tp, end in ends.items() if self.processor.position(tp.topic, tp.partition) < end
        }
        while behind:
            batch = await consumer.getmany(timeout_ms=500, max_records=self.settings.max_batch)
            records = [r for rs in batch.values() for r in rs]
            if records:
                if not await self._submit(consumer, records):
                    return
                await self.processor.flush()
            behind = {
                tp for tp in behind if self.processor.position(tp.topic, tp.partition) < ends[tp]
            }
        log.info("parents caught up")

    async def _pump_parents(self) -> None:
        """Keep applying parent records; idle time drains rewrites and marks."""
        consumer = self._global
        assert consumer is not None and self.processor is not None
        while not self._stopping and self.fatal is None:
            try:
                batch = await consumer.getmany(
                    timeout_ms=self.settings.batch_timeout_ms, max_records=self.settings.max_batch
                )
                records = [r for rs in batch.values() for r in rs]
                if records:
                    await self._submit(consumer, records)
                elif self.processor.has_work():
                    await self._submit(consumer, [])  # activations, marks, rewrites
            except asyncio.CancelledError:
                raise
            except Exception:  # the consumer itself failed: it resumes where it stood
                log.exception("reading the parent topics failed; retrying")
                await asyncio.sleep(self.settings.retry_max_s)

    def parent_lag(self) -> int:
        """Parent records fetched or fetchable but not yet applied (committed), all partitions."""
        consumer, processor = self._global, self.processor
        if consumer is None or processor is None:
            return 0
        lag = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                lag += max(highwater - processor.position(tp.topic, tp.partition), 0)
        return lag

    async def _parents_first(self) -> None:
        """Hold group records while the parents lag (a backlog): artifacts then find their
        parents and are written once instead of once more per parent that arrives later."""
        limit = self.settings.parents_first_lag
        if not limit:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.parents_first_max_s
        while self.parent_lag() > limit and loop.time() < deadline and not self._stopping:
            metrics.ARTIFACTS_HELD.set(1)
            await asyncio.sleep(0.05)
        metrics.ARTIFACTS_HELD.set(0)

    # -- the group topics ---------------------------------------------------------------
    async def handle(self, body: Any, message: KafkaMessage) -> None:
        """Apply a batch of artifact and member records (offsets follow the store's)."""
        records: tuple[ConsumerRecord[Any, Any], ...] = message.raw_message
        if not records or self.processor is None or self.fatal is not None:
            return
        await self._parents_first()
        if await self._submit(message.consumer, records):
            self.batches += 1
            metrics.BATCH_SIZE.observe(len(records))
            metrics.ACTIVE_PARTITIONS.set(len(self.processor.active))

    async def _submit(self, consumer: AIOKafkaConsumer, records: Sequence[Any]) -> bool:
        """Hand a batch to the processor; on failure, never let its records be skipped."""
        processor = self.processor
        assert processor is not None

        def committed(result: StepResult) -> None:
            self._spawn(self._commit(consumer, result))

        try:
            await processor.submit(records, committed)
            return True
        except PipelineError as exc:
            self._fail(exc)
        except Exception:
            # the step could not be computed (a bug): nothing of it reached the store; once
            # the steps before it are committed, re-read its partitions from the store
            log.exception("step failed; re-reading from the store's positions")
            await processor.flush()
            if processor.failed is not None:
                self._fail(processor.failed)
                return False
            for tp in _tps(records) & consumer.assignment():
                consumer.seek(tp, processor.position(tp.topic, tp.partition))
            await asyncio.sleep(self.settings.retry_max_s)
        return False

    def _fail(self, exc: BaseException) -> None:
        """A step's effects failed with an error no retry is known to fix (a bug): stop
        consuming, so the process exits and restarts from its store (nothing is lost)."""
        if self.fatal is None:
            log.critical("a step failed for good; stopping the indexer", exc_info=exc)
            self.fatal = exc
            if self._on_fatal is not None:
                self._on_fatal()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _commit(self, consumer: AIOKafkaConsumer, result: StepResult) -> None:
        """Commit the step's positions to Kafka (monitoring only) and export the lag."""
        assigned = consumer.assignment()
        positions = {
            TopicPartition(*tp): pos
            for tp, pos in result.positions.items()
            if TopicPartition(*tp) in assigned
        }
        if positions:
            try:
                await consumer.commit(positions)
            except CommitFailedError:
                log.info("commit refused after a rebalance (positions live in the store)")
            except KafkaError as exc:
                log.warning("offset commit failed (%s); positions live in the store", exc)
        for tp, position in positions.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))

    # -- outputs ------------------------------------------------------------------------
    def _producer_or_fail(self) -> AIOKafkaProducer:
        assert self._producer is not None, "the indexer is not started"
        return self._producer

    async def _publish_members(self, members: Sequence[tuple[int, Member]]) -> None:
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

    async def _dead_letter(self, item: Poison) -> None:
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
    indexer = Indexer(settings, ElasticsearchSettings(), IndexerSettings(instance_id="spec"))
    spec = indexer.app().schema.to_specification().to_jsonable()
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def _safe_header(value: bytes | None) -> bytes:
    """A header value FastStream can decode as UTF-8: null becomes empty, bad bytes replaced."""
    if value is None:
        return b""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace").encode()
    return value


async def _raw_parser(msg: Any, original: Any) -> Any:
    """Build the batch message from sanitized header copies (null or non-UTF-8 header values
    must never make FastStream drop a batch); the handler still gets the untouched records,
    whose original header bytes go to the dead letters."""
    safe = []
    for rec in msg:
        headers = rec.headers or ()
        if any(v is None or _safe_header(v) is not v for _, v in headers):
            rec = dataclasses.replace(rec, headers=[(k, _safe_header(v)) for k, v in headers])
        safe.append(rec)
    message = await original(tuple(safe))
    message.raw_message = tuple(msg)
    return message


async def _raw_decoder(msg: Any, original: Any) -> Any:
    """Skip FastStream's body decoding: the handler parses raw bytes itself."""
    return None


__all__ = ["Indexer", "dlq_headers"]

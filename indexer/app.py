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
under `KAFKA_GROUP_ID`, the global consumer's under `<group>.global.<instance id>`; one
commit per consumer is in flight, the steps committed meanwhile are merged into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from elasticsearch import AsyncElasticsearch
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage

from indexer import metrics
from indexer.changes import ChangePublisher
from indexer.edge import document_topics, raw_decoder, raw_parser, specification
from indexer.outputs import KafkaOutputs, MemberRecord, dlq_headers
from indexer.parents import Parents
from indexer.refresh import Refresher
from indexer.runtime import PipelineError, Processor, StepResult
from indexer.step import Topology
from indexer.store import RocksStore, Store
from indexer.tracing import batch_scope
from indexer.writer import BulkWriter, ControlEpochs
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings
from services.errors import PermanentError
from services.es.admin import ensure_indices
from services.es.client import make_es_client
from services.es.indices import IndexNames
from services.kafka import OffsetCommits, broker_kwargs, commit_offsets
from services.telemetry import kafka_middlewares

log = logging.getLogger("indexer")
_FASTSTREAM_LOG = logging.getLogger("indexer.faststream")


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
        # the group's offsets show the store's positions soon: a previous run may have
        # stopped before committing its last steps to Kafka, or the group was rewound, and
        # with nothing new to consume no step would commit (a lag shown for ever). Not
        # awaited here: a commit waits for the rebalance, which waits for this callback
        self.indexer._spawn(self.indexer.commit_positions(consumer, assigned))
        if assigned:  # what a previous run of this replica may have applied uncommitted
            for tp, end in (await consumer.end_offsets(list(assigned))).items():
                processor.suspect_below((tp.topic, tp.partition), end)
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
        # a plain logger: FastStream's own one prints coloured text past the JSON handler
        # tracing on: FastStream's telemetry middleware (a consumer span per batch)
        self.broker = KafkaBroker(
            **broker_kwargs(kafka), logger=_FASTSTREAM_LOG, middlewares=kafka_middlewares()
        )
        self.processor: Processor | None = None
        self.batches = 0
        self.bootstrapped = asyncio.Event()
        self._store = store
        self._owns_store = store is None
        self.outputs = KafkaOutputs(kafka)
        self.changes = (
            ChangePublisher(kafka, self.names.artifacts, self.names.collections)
            if settings.publish_changes
            else None
        )
        self.parents: Parents | None = None
        self._pump: asyncio.Task[None] | None = None
        self.refresher: Refresher | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._offsets = OffsetCommits()
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
            fetch_min_bytes=self.settings.fetch_min_bytes,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            max_poll_interval_ms=900_000,
            listener=_Rebalance(self),
            parser=raw_parser,
            decoder=raw_decoder,
        )
        self._subscriber(self.handle)
        document_topics(self.broker, self.kafka)

    def group_consumer(self) -> AIOKafkaConsumer | None:
        """The group subscriber's aiokafka consumer, once started."""
        return getattr(self._subscriber, "consumer", None)

    # -- lifecycle ----------------------------------------------------------------------
    async def bootstrap(self) -> None:
        """Create indices and aliases if missing (idempotent; the member topic is created
        when the processor starts)."""
        await ensure_indices(
            self.es,
            self.names,
            self.es_settings.number_of_shards,
            self.es_settings.number_of_replicas,
            self.es_settings.refresh_interval,
        )

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
        partitions = await self.outputs.member_partitions()
        store = self._open_store(partitions)
        self._store = store
        await self.outputs.start()
        if self.changes is not None:
            await self.changes.start()
        topology = Topology(
            parents=self.parent_topics,
            artifacts=self.artifact_topic,
            members=self.members_topic,
            member_partitions=partitions,
            search_text=self.settings.search_text,
        )
        index_of = {"artifact": self.names.artifacts, "collection": self.names.collections}
        if self.settings.refresh_after_write_s > 0:
            self.refresher = Refresher(
                lambda indices: self.es.indices.refresh(index=indices),
                self.settings.refresh_after_write_s,
            )
            self._refreshing = asyncio.create_task(self.refresher.run(), name="indexer-refresh")
        self.processor = Processor(
            store,
            topology,
            BulkWriter(self.es, self.settings.bulk_chunk, self.settings.bulk_concurrency),
            ControlEpochs(self.es, self.names.control, self.kafka.group_id),
            index_of.__getitem__,
            self.outputs.publish_members,
            self.outputs.dead_letter,
            max_event_bytes=self.settings.max_event_bytes,
            rewrite_budget=self.settings.rewrite_budget,
            cache_entries=self.settings.state_cache_entries,
            retry_initial_s=self.settings.retry_initial_s,
            retry_max_s=self.settings.retry_max_s,
            depth=self.settings.pipeline_depth,
            defer_lag=self.settings.defer_lag,
            defer_max_s=self.settings.defer_max_s,
            publish_changes=None if self.changes is None else self.changes.publish,
            written=None if self.refresher is None else self.refresher.request,
        )
        self.processor.backlog = self.backlog
        self.parents = Parents(
            self.kafka, self.settings, list(self.parent_topics), self.processor, self._submit
        )
        await self.parents.start()
        await self.parents.catch_up()
        self._pump = asyncio.create_task(self.parents.pump(), name="indexer-parents")
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
        if self.processor is not None and self.fatal is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.processor.flush(), self.settings.retry_max_s * 3)
        if self.parents is not None:
            self.parents.running = False
        for task in (self._pump, self._refreshing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.parents is not None:
            await self.parents.stop()
        await self.outputs.stop()
        if self.changes is not None:
            await self.changes.stop()
        if self._store is not None and self._owns_store:
            self._store.close()
            self._store = None
        await self.es.close()

    def app(self, first: Sequence[Callable[[], Awaitable[None]]] = ()) -> FastStream:
        """The FastStream application to run (SIGTERM stops it gracefully).

        `first` runs before anything else at start-up (the health server: liveness must
        answer while the parents are caught up, which can take minutes).
        """
        app = FastStream(
            self.broker, specification=specification(self.kafka), logger=_FASTSTREAM_LOG
        )
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
    # -- the group topics ---------------------------------------------------------------
    async def handle(self, body: Any, message: KafkaMessage) -> None:
        """Apply a batch of artifact and member records (offsets follow the store's)."""
        records: tuple[ConsumerRecord[Any, Any], ...] = message.raw_message
        if not records or self.processor is None or self.fatal is not None:
            return
        if self.parents is not None:
            await self.parents.hold()
        if await self._submit(message.consumer, records):
            self.batches += 1
            metrics.BATCH_SIZE.observe(len(records))
            metrics.ACTIVE_PARTITIONS.set(len(self.processor.active))

    async def _submit(self, consumer: AIOKafkaConsumer, records: Sequence[Any]) -> bool:
        """Hand a batch to the processor; on failure, never let its records be skipped.

        The batch has an id in the log lines and, tracing on, a span (indexer/tracing.py)."""
        source = "global" if records and records[0].topic in self.parent_topics else "group"
        with batch_scope(records, source) as batch:
            return await self._submit_batch(consumer, records, batch.follow)

    async def _submit_batch(
        self,
        consumer: AIOKafkaConsumer,
        records: Sequence[Any],
        follow: Callable[[asyncio.Future[StepResult]], None],
    ) -> bool:
        processor = self.processor
        assert processor is not None

        def committed(result: StepResult) -> None:
            self._committed(consumer, result)

        try:
            follow(await processor.submit(records, committed))
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

    def backlog(self) -> int:
        """Records waiting to be applied: the group's partitions and the parents'."""
        lag = self.parent_lag()
        consumer, processor = self.group_consumer(), self.processor
        if consumer is not None and processor is not None:
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag += max(highwater - processor.position(tp.topic, tp.partition), 0)
        return lag

    def parent_lag(self) -> int:
        """Parent records not applied yet (0 before start-up)."""
        return 0 if self.parents is None else self.parents.lag()

    def _fail(self, exc: BaseException) -> None:
        """A step's effects failed with an error no retry is known to fix (a bug): stop
        consuming, so the process exits and restarts from its store (nothing is lost)."""
        if self.fatal is None:
            log.critical("a step failed for good; stopping the indexer", exc_info=exc)
            self.fatal = exc
            if self.parents is not None:
                self.parents.running = False
            if self._on_fatal is not None:
                self._on_fatal()

    async def commit_positions(self, consumer: AIOKafkaConsumer, tps: set[TopicPartition]) -> None:
        """Commit the store's positions of `tps` still assigned (monitoring only)."""
        processor = self.processor
        if processor is None:
            return
        still = tps & consumer.assignment()
        await commit_offsets(
            consumer, {tp: processor.position(tp.topic, tp.partition) for tp in still}
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _committed(self, consumer: AIOKafkaConsumer, result: StepResult) -> None:
        """Export the lag of a committed step and commit its positions to Kafka (monitoring
        only; `OffsetCommits` merges the steps committed while a commit is in flight)."""
        assigned = consumer.assignment()
        positions = {
            TopicPartition(*tp): pos
            for tp, pos in result.positions.items()
            if TopicPartition(*tp) in assigned
        }
        for tp, position in positions.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition)).set(max(highwater - position, 0))
        self._offsets.add(consumer, positions)


def asyncapi_json(kafka: KafkaSettings | None = None) -> str:
    """The AsyncAPI document for default (or given) settings, as stable JSON."""
    settings = kafka or KafkaSettings(bootstrap_servers="kafka:9092")
    indexer = Indexer(settings, ElasticsearchSettings(), IndexerSettings(instance_id="spec"))
    spec = indexer.app().schema.to_specification().to_jsonable()
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


__all__ = ["Indexer", "MemberRecord", "dlq_headers"]

"""Kafka adapter: the indexer's change feed (services/changes.py), behind
`INDEXER_PUBLISH_CHANGES`.

`publish` runs in a step's effects after Elasticsearch accepted the step's writes and
before the step is committed (indexer/runtime.py), so every artifact and collection
document a committed step wrote is announced at least once; Kafka errors are transient
(the processor retries the whole set, which readers tolerate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from indexer.writer import Versioned
from services.changes import encode_changes
from services.config import KafkaSettings
from services.errors import TransientError
from services.kafka import producer_kwargs
from services.topics import ensure_topics


class ChangePublisher:
    """Publishes (id, document version) of written artifact and collection documents."""

    def __init__(self, kafka: KafkaSettings, artifact_index: str, collection_index: str) -> None:
        self.kafka = kafka
        self.topic = kafka.changes_topic
        self.artifact_index = artifact_index
        self.collection_index = collection_index
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Create the topic if missing and start the producer."""
        await ensure_topics(self.kafka, [self.topic])
        self._producer = AIOKafkaProducer(
            **producer_kwargs(self.kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            # a step's records (up to 500 ids each, ~25 KiB) in one batch: aiokafka sends
            # one batch per partition at a time, the default 16 KiB holds less than a record
            max_batch_size=512 * 1024,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and stop the producer."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, writes: Sequence[Versioned]) -> None:
        """Announce the artifact and collection documents among `writes`."""
        pairs = [(w.doc_id, w.version) for w in writes if w.index == self.artifact_index]
        collections = [(w.doc_id, w.version) for w in writes if w.index == self.collection_index]
        if not pairs and not collections:
            return
        assert self._producer is not None, "the change publisher is not started"
        try:
            futures = [
                await self._producer.send(self.topic, value=value)
                for value in encode_changes(pairs, collections)
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise TransientError(f"publishing the change feed failed: {exc}") from exc

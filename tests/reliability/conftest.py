"""Shared pieces of the reliability suite: an in-process stack on unique topics and indices.

The indexer runs in-process (as in tests/e2e) so its Prometheus counters can be read
from ``prometheus_client.REGISTRY``; the query API runs in-process over httpx's ASGI
transport. Every fixture uses its own topic and index prefix and removes them afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from elasticsearch import AsyncElasticsearch

from artifact_search.api import create_api
from indexer.app import Indexer
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings, QuerySettings
from services.contract import ENTITIES
from services.es.admin import drop_indices
from services.es.indices import IndexNames
from tests.waiting import wait_for

MAX_EVENT_BYTES = 65_536
"""INDEXER_MAX_EVENT_BYTES of the poison stack: large enough for a 40 KB artifact key."""


def reliability_cases(default: int = 1000) -> int:
    """How many generated cases a property run tries (env RELIABILITY_CASES)."""
    return max(1, int(os.environ.get("RELIABILITY_CASES", str(default))))


@dataclass(frozen=True)
class Produced:
    """One record to publish: entity of the topic, key, value, headers, partition."""

    entity: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int = 0


@dataclass
class Stack:
    """The running pieces and where they read and write."""

    kafka: KafkaSettings
    es_settings: ElasticsearchSettings
    indexer: Indexer
    client: httpx.AsyncClient
    produced: list[Produced] = field(default_factory=list)

    async def publish(self, records: Sequence[Produced]) -> None:
        """Publish in order (acks=all), each record to its explicit partition."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            acks="all",
            max_request_size=4 * MAX_EVENT_BYTES,
        )
        await producer.start()
        try:
            for rec in records:
                await producer.send_and_wait(
                    self.kafka.topic_for(rec.entity),
                    value=rec.value,
                    key=rec.key,
                    headers=list(rec.headers),
                    partition=rec.partition,
                )
                self.produced.append(rec)
        finally:
            await producer.stop()

    async def read_dlq(self, want: int, seconds: float, settle: float = 3.0) -> list[Any]:
        """Read the dead-letter topic from the start until `want` records (then `settle` s)."""
        consumer = AIOKafkaConsumer(
            self.kafka.dlq_topic,
            bootstrap_servers=self.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=f"dlq-{uuid.uuid4().hex[:8]}",
        )
        await consumer.start()
        out: list[Any] = []
        try:
            deadline = time.monotonic() + seconds
            while len(out) < want and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(msgs)
            # anything beyond `want` would be a record dead-lettered by mistake
            settle_until = time.monotonic() + settle
            while time.monotonic() < settle_until:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(msgs)
        finally:
            await consumer.stop()
        return out


async def wait_until(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], want: Any, seconds: float
) -> Any:
    """Poll an endpoint until it answers `want` or time runs out; return the last answer."""

    async def answer() -> Any:
        return (await client.post(path, json=body)).json()

    return await wait_for(answer, lambda got: bool(got == want), seconds, interval=0.5)


@pytest.fixture
async def poison_stack(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str
) -> AsyncIterator[Stack]:
    """Topics, indices, a started in-process Indexer and the query API, all unique."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"{unique_name}.", group_id=unique_name
    )
    es_settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=f"{unique_name}-")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    topics = [kafka.topic_for(e) for e in ENTITIES] + [kafka.dlq_topic]
    await admin.create_topics([NewTopic(t, 3, 1) for t in topics])
    indexer = Indexer(
        kafka,
        es_settings,
        IndexerSettings(max_batch=50, max_event_bytes=MAX_EVENT_BYTES, retry_max_s=1.0),
    )
    await indexer.start()
    app = create_api(QuerySettings(), es_settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")
    try:
        yield Stack(kafka, es_settings, indexer, client)
    finally:
        await client.aclose()
        await indexer.stop()
        await admin.delete_topics(topics)
        await admin.close()
        es = AsyncElasticsearch(elasticsearch_url)
        await drop_indices(es, IndexNames(es_settings.index_prefix))
        await es.close()

"""Smoke tests: the real Kafka, Elasticsearch and PostgreSQL servers answer the clients we use.

They say nothing about the project's code; when one fails, the environment is broken
(see deploy/local/servers.sh and tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from elasticsearch import AsyncElasticsearch
from faststream.kafka import KafkaBroker

WAIT_S = 30.0


@pytest.fixture
async def kafka_topic(kafka_bootstrap: str, unique_name: str) -> AsyncIterator[str]:
    """A fresh 1-partition topic, deleted afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=unique_name, num_partitions=1, replication_factor=1)]
        )
        yield unique_name
    finally:
        try:
            await admin.delete_topics([unique_name])
        finally:
            await admin.close()


async def test_kafka_roundtrip_aiokafka(kafka_bootstrap: str, kafka_topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(kafka_topic, b"hello", key=b"k1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{kafka_topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=WAIT_S)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k1", b"hello")


async def test_kafka_roundtrip_faststream(kafka_bootstrap: str, kafka_topic: str) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    received: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    @broker.subscriber(kafka_topic, group_id=f"{kafka_topic}-fs", auto_offset_reset="earliest")
    async def handle(body: dict[str, object]) -> None:
        if not received.done():
            received.set_result(body)

    await broker.start()
    try:
        await broker.publish({"hello": "faststream", "n": 1}, topic=kafka_topic)
        body = await asyncio.wait_for(received, timeout=WAIT_S)
    finally:
        await broker.stop()
    assert body == {"hello": "faststream", "n": 1}


async def test_elasticsearch_index_and_search(elasticsearch_url: str, unique_name: str) -> None:
    es = AsyncElasticsearch(elasticsearch_url, request_timeout=30)
    try:
        await es.indices.create(
            index=unique_name,
            settings={"number_of_shards": 1, "number_of_replicas": 0},
            mappings={"properties": {"key": {"type": "keyword"}, "body": {"type": "text"}}},
        )
        try:
            await es.index(index=unique_name, id="1", document={"key": "a-1", "body": "hello es"})
            await es.indices.refresh(index=unique_name)
            resp = await es.search(index=unique_name, query={"term": {"key": "a-1"}})
            hits = resp["hits"]["hits"]
            assert [h["_id"] for h in hits] == ["1"], json.dumps(resp.body)
            assert hits[0]["_source"]["body"] == "hello es"
        finally:
            await es.indices.delete(index=unique_name, ignore_unavailable=True)
    finally:
        await es.close()


async def test_postgres_c_collation(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn, timeout=30)
    try:
        assert await conn.fetchval("SHOW lc_collate") == "C"
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()

"""Events in through the real Kafka broker and the FastStream indexer, HTTP answers out."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from elasticsearch import AsyncElasticsearch

from indexer.app import Indexer
from query.app import create_app
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings, QuerySettings
from services.contract import ENTITIES, encode_event
from services.datagen import DatasetScale, generate_dataset
from services.es.admin import drop_indices
from services.es.indices import IndexNames
from services.events import HARD, dataset_records


@contextlib.asynccontextmanager
async def running(
    kafka_bootstrap: str,
    elasticsearch_url: str,
    name: str,
    settings: IndexerSettings,
    backlog: list[tuple[str, bytes, bytes | None]] | None = None,
    prepare: Callable[[Indexer], None] | None = None,
) -> AsyncIterator[tuple[KafkaSettings, Indexer, httpx.AsyncClient]]:
    """Fresh topics and indices, an indexer and the API; `backlog` is published first."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"{name}.", group_id=name)
    es_settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=f"{name}-")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    topics = [kafka.topic_for(e) for e in ENTITIES] + [kafka.dlq_topic]
    await admin.create_topics([NewTopic(t, 3, 1) for t in topics])
    if backlog:
        await publish(kafka, backlog)
    indexer = Indexer(kafka, es_settings, settings)
    if prepare is not None:
        prepare(indexer)
    await indexer.start()
    app = create_app(QuerySettings(), es_settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")
    try:
        yield kafka, indexer, client
    finally:
        await client.aclose()
        await indexer.stop()
        await admin.delete_topics(topics)
        await admin.close()
        es = AsyncElasticsearch(elasticsearch_url)
        await drop_indices(es, IndexNames(es_settings.index_prefix))
        await es.close()


@pytest.fixture
async def stack(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str
) -> AsyncIterator[tuple[KafkaSettings, Indexer, httpx.AsyncClient]]:
    settings = IndexerSettings(max_batch=500)
    async with running(kafka_bootstrap, elasticsearch_url, unique_name, settings) as parts:
        yield parts


async def publish(kafka: KafkaSettings, records: list[tuple[str, bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for entity, key, value in records:
            await producer.send(kafka.topic_for(entity), value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_for(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], want: Any, seconds: float
) -> Any:
    deadline = time.monotonic() + seconds
    got = None
    while time.monotonic() < deadline:
        resp = await client.post(path, json=body)
        got = resp.json()
        if got == want:
            return got
        await asyncio.sleep(0.5)
    return got


async def test_dataset_through_kafka_converges(stack: Any) -> None:
    kafka, _, client = stack
    dataset = generate_dataset(5, DatasetScale.tiny())
    await publish(kafka, dataset_records(dataset, 5, HARD))
    want_count = len(dataset.artifacts)
    assert await wait_for(client, "/api/artifacts/count", {}, want_count, 90) == want_count
    keys = {a["key"] for a in dataset.artifacts if a["key"] is not None}
    assert await wait_for(client, "/api/artifacts/latest/count", {}, len(keys), 30) == len(keys)
    # artifacts whose flow run survives are exactly those a `flow_runs: {}` filter keeps
    runs = {r["id"] for r in dataset.flow_runs}
    joined = sum(1 for a in dataset.artifacts if a["flow_run_id"] in runs)
    assert await wait_for(client, "/api/artifacts/count", {"flow_runs": {}}, joined, 30) == joined
    # every artifact comes back exactly as the dataset holds it
    resp = await client.post("/api/artifacts/filter", json={"limit": 200})
    by_id = {a["id"]: a for a in dataset.artifacts}
    for row in resp.json():
        assert row == by_id[row["id"]]


async def test_poison_goes_to_dead_letter_topic_and_valid_events_survive(stack: Any) -> None:
    kafka, _, client = stack
    good = str(uuid.uuid4())
    valid = {
        "id": good,
        "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-01T00:00:00Z",
        "key": "after-poison",
        "type": "markdown",
    }
    bad_key = str(uuid.uuid4())
    records: list[tuple[str, bytes, bytes | None]] = [
        ("artifact", bad_key.encode(), b"{not json"),
        ("artifact", b"not-a-uuid", encode_event("artifact", bad_key, "upsert", 1, valid)),
        ("flow", bad_key.encode(), encode_event("artifact", bad_key, "upsert", 1, valid)),
        ("artifact", good.encode(), encode_event("artifact", good, "upsert", 1, valid)),
    ]
    await publish(kafka, records)
    body = {"artifacts": {"key": {"any_": ["after-poison"]}}}
    assert await wait_for(client, "/api/artifacts/count", body, 1, 60) == 1
    consumer = AIOKafkaConsumer(
        kafka.dlq_topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"dlq-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    try:
        reasons = []
        deadline = time.monotonic() + 30
        while len(reasons) < 3 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for msgs in batch.values():
                for msg in msgs:
                    reasons.append(dict(msg.headers)["dlq.reason"].decode())
        assert sorted(reasons) == ["entity_mismatch", "invalid_json", "invalid_key"]
    finally:
        await consumer.stop()


async def test_parents_first_holds_artifacts_back_during_a_backlog(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str
) -> None:
    """A backlog on every topic (artifacts published first): once the indexer has seen
    the parents' lag, it applies no artifact until the parent topics are drained, and the
    index converges."""
    dataset = generate_dataset(11, DatasetScale.for_artifacts(3_000))
    # artifacts first, then task runs, ..., flows (each key's own order kept)
    records = sorted(dataset_records(dataset, 11), key=lambda r: -ENTITIES.index(r[0]))
    settings = IndexerSettings(
        max_batch=100,
        max_partition_fetch_bytes=8_192,  # every fetch round interleaves all topics
        parents_first_lag=20,
        parents_first_max_batches=10**6,
    )
    batches: list[tuple[int, int]] = []  # (parent events, artifact events) per batch

    def record_batches(indexer: Indexer) -> None:
        apply = indexer.engine.apply

        async def recording_apply(events: Any) -> Any:
            artifacts = sum(1 for e in events if e.entity == "artifact")
            batches.append((len(events) - artifacts, artifacts))
            return await apply(events)

        indexer.engine.apply = recording_apply  # type: ignore[method-assign]

    async with running(
        kafka_bootstrap, elasticsearch_url, unique_name, settings, records, record_batches
    ) as (_, _, client):
        want = len(dataset.artifacts)
        assert await wait_for(client, "/api/artifacts/count", {}, want, 120) == want
        runs = {r["id"] for r in dataset.flow_runs}
        joined = sum(1 for a in dataset.artifacts if a["flow_run_id"] in runs)
        got = await wait_for(client, "/api/artifacts/count", {"flow_runs": {}}, joined, 30)
        assert got == joined
        parents = len(records) - sum(1 for r in records if r[0] == "artifact")
        for _ in range(150):  # at most 30 s for the last parent batches
            if sum(p for p, _ in batches) >= parents:
                break
            await asyncio.sleep(0.2)
        assert sum(p for p, _ in batches) >= parents
        first_parent = next(i for i, (p, _) in enumerate(batches) if p)
        last_parent = max(i for i, (p, _) in enumerate(batches) if p)
        # the batch that revealed the lag may carry artifacts; later ones hold them back
        early = sum(a for _, a in batches[first_parent + 1 : last_parent])
        assert early == 0, batches[: last_parent + 1]
        assert sum(a for _, a in batches) >= want

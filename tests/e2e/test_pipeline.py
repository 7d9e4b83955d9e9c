"""Events in through the real Kafka broker and the FastStream indexer, HTTP answers out."""

from __future__ import annotations

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

from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import HARD, dataset_records
from indexer.app import Indexer
from query.app import create_app
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings, QuerySettings
from services.contract import ENTITIES, encode_event
from services.es.admin import drop_indices
from services.es.indices import IndexNames
from tests.waiting import wait_answer, wait_for


@contextlib.asynccontextmanager
async def running(
    kafka_bootstrap: str,
    elasticsearch_url: str,
    name: str,
    settings: IndexerSettings,
    backlog: list[tuple[str, bytes, bytes | None]] | None = None,
    prepare: Callable[[Indexer], None] | None = None,
    refresh_interval: str = "30s",
) -> AsyncIterator[tuple[KafkaSettings, Indexer, httpx.AsyncClient]]:
    """Fresh topics and indices, an indexer and the API; `backlog` is published first."""
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"{name}.", group_id=name)
    es_settings = ElasticsearchSettings(
        url=elasticsearch_url, index_prefix=f"{name}-", refresh_interval=refresh_interval
    )
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


async def dead_letters(kafka: KafkaSettings, want: int, seconds: float = 30) -> list[Any]:
    """Records of the dead-letter topic, once `want` of them arrived (or time ran out)."""
    consumer = AIOKafkaConsumer(
        kafka.dlq_topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=f"dlq-{uuid.uuid4().hex[:6]}",
    )
    await consumer.start()
    dead: list[Any] = []
    try:
        deadline = time.monotonic() + seconds
        while len(dead) < want and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                dead.extend(msgs)
    finally:
        await consumer.stop()
    return dead


async def test_dataset_through_kafka_converges(stack: Any) -> None:
    kafka, _, client = stack
    dataset = generate_dataset(5, DatasetScale.tiny())
    await publish(kafka, dataset_records(dataset, 5, HARD))
    want_count = len(dataset.artifacts)
    assert await wait_answer(client, "/api/artifacts/count", {}, want_count, 90) == want_count
    keys = {a["key"] for a in dataset.artifacts if a["key"] is not None}
    assert await wait_answer(client, "/api/artifacts/latest/count", {}, len(keys), 30) == len(keys)
    # artifacts whose flow run survives are exactly those a `flow_runs: {}` filter keeps
    runs = {r["id"] for r in dataset.flow_runs}
    joined = sum(1 for a in dataset.artifacts if a["flow_run_id"] in runs)
    assert (
        await wait_answer(client, "/api/artifacts/count", {"flow_runs": {}}, joined, 30) == joined
    )
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
    assert await wait_answer(client, "/api/artifacts/count", body, 1, 60) == 1
    dead = await dead_letters(kafka, 3)
    reasons = [dict(msg.headers)["dlq.reason"].decode() for msg in dead]
    assert sorted(reasons) == ["entity_mismatch", "invalid_json", "invalid_key"]


async def test_parents_are_caught_up_before_any_artifact_so_nothing_is_written_twice(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, monkeypatch: Any
) -> None:
    """A backlog on every topic (artifacts published first): the indexer applies every parent
    record before the first artifact (the global tables' restore), so no artifact document
    is ever rewritten by fan-out during the initial load, and the index converges."""
    from indexer import runtime

    dataset = generate_dataset(11, DatasetScale.for_artifacts(3_000))
    # artifacts first, then task runs, ..., flows (each key's own order kept)
    records = sorted(dataset_records(dataset, 11), key=lambda r: -ENTITIES.index(r[0]))
    steps: list[tuple[int, int, int]] = []  # (parent records, artifact records, fanned out)
    real = runtime.run_step

    def recording(tx: Any, topology: Any, batch: Any, *args: Any) -> Any:
        output = real(tx, topology, batch, *args)
        artifacts = sum(1 for r in batch if r.topic == topology.artifacts)
        members = sum(1 for r in batch if r.topic == topology.members)
        steps.append((len(batch) - artifacts - members, artifacts, output.fanned_out))
        return output

    monkeypatch.setattr(runtime, "run_step", recording)
    settings = IndexerSettings(max_batch=500)
    async with running(kafka_bootstrap, elasticsearch_url, unique_name, settings, records) as (
        _,
        _,
        client,
    ):
        want = len(dataset.artifacts)
        assert await wait_answer(client, "/api/artifacts/count", {}, want, 120) == want
        runs = {r["id"] for r in dataset.flow_runs}
        joined = sum(1 for a in dataset.artifacts if a["flow_run_id"] in runs)
        got = await wait_answer(client, "/api/artifacts/count", {"flow_runs": {}}, joined, 30)
        assert got == joined
    parents = len(records) - sum(1 for r in records if r[0] == "artifact")
    first_artifact = next(i for i, (_, a, _) in enumerate(steps) if a)
    assert sum(p for p, _, _ in steps[:first_artifact]) == parents, steps[: first_artifact + 1]
    assert all(fanned == 0 for _, a, fanned in steps if a), steps


async def test_null_and_non_utf8_headers_never_lose_a_record(stack: Any) -> None:
    """Through the real FastStream path: a header whose value is null (aiokafka gives None)
    or not UTF-8 must not make the batch fail; valid records are applied, poison ones are
    dead-lettered with their original header bytes."""
    kafka, _, client = stack
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    good = [str(uuid.uuid4()) for _ in range(3)]
    headers = [("nullable", None), ("latin1", b"caf\xe9"), ("ok", b"yes")]
    try:
        for i, aid in enumerate(good):
            data = {
                "id": aid,
                "created": "2024-01-01T00:00:00Z",
                "updated": "2024-01-01T00:00:00Z",
                "key": "headers",
                "type": "markdown",
            }
            value = encode_event("artifact", aid, "upsert", 1, data)
            await producer.send(
                kafka.topic_for("artifact"), value=value, key=aid.encode(), headers=headers
            )
            if i == 1:
                await producer.send(
                    kafka.topic_for("artifact"),
                    value=b"{oops",
                    key=str(uuid.uuid4()).encode(),
                    headers=headers,
                )
        await producer.flush()
    finally:
        await producer.stop()
    body = {"artifacts": {"key": {"any_": ["headers"]}}}
    assert await wait_answer(client, "/api/artifacts/count", body, 3, 60) == 3
    dead = await dead_letters(kafka, 1)
    assert len(dead) == 1
    got = dict(dead[0].headers)
    assert got["dlq.reason"] == b"invalid_json"
    assert got["original.latin1"] == b"caf\xe9"
    assert got["original.nullable"] in (None, b"")


@pytest.mark.parametrize("refresh_after_write_s", [0.25, 0.0])
async def test_writes_are_made_searchable_by_the_indexer_without_the_periodic_refresh(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, refresh_after_write_s: float
) -> None:
    """The indices' periodic refresh is turned off: with `INDEXER_REFRESH_AFTER_WRITE_S` the
    indexer's own refresh makes its writes searchable; without it (0), nothing it committed
    is searchable until somebody refreshes (which shows the first case's refresh is the
    indexer's)."""
    settings = IndexerSettings(max_batch=500, refresh_after_write_s=refresh_after_write_s)
    async with running(kafka_bootstrap, elasticsearch_url, unique_name, settings) as (
        kafka,
        indexer,
        client,
    ):
        names = IndexNames(f"{unique_name}-")
        es = AsyncElasticsearch(elasticsearch_url)
        try:
            await es.indices.put_settings(
                index=f"{names.artifacts},{names.collections}",
                settings={"index": {"refresh_interval": "-1"}},
            )
            records = [_keyed_artifact("refreshed", i) for i in range(5)]
            await publish(kafka, records)
            assert await _all_applied(kafka, indexer, len(records))
            body = {"artifacts": {"key": {"any_": ["refreshed"]}}}
            if refresh_after_write_s:
                assert await wait_answer(client, "/api/artifacts/count", body, 5, 30) == 5
                assert await wait_answer(client, "/api/artifacts/latest/count", body, 1, 30) == 1
            else:
                # every record is applied and committed, its documents written: not searchable
                assert (await client.post("/api/artifacts/count", json=body)).json() == 0
                await es.indices.refresh(index=names.artifacts)
                assert (await client.post("/api/artifacts/count", json=body)).json() == 5
        finally:
            await es.close()


async def test_a_backlog_is_made_searchable_by_the_indexer_without_the_periodic_refresh(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str
) -> None:
    """The indices never refresh by themselves (`ELASTICSEARCH_REFRESH_INTERVAL=-1`) and a
    backlog is consumed by steps that defer their documents (no refresh asked): the step
    that stops deferring asks for the refresh of everything they wrote — here a step that
    writes nothing itself (the backlog ends with records already applied)."""
    fresh = [_keyless_artifact(i) for i in range(200)]
    backlog = fresh + fresh  # the second half: duplicates, applied without any write
    settings = IndexerSettings(max_batch=50, defer_lag=10, refresh_after_write_s=0.25)
    async with running(
        kafka_bootstrap,
        elasticsearch_url,
        unique_name,
        settings,
        backlog=backlog,
        refresh_interval="-1",
    ) as (kafka, indexer, client):
        names = IndexNames(f"{unique_name}-")
        es = AsyncElasticsearch(elasticsearch_url)
        try:
            got = await es.indices.get_settings(
                index=names.artifacts, name="index.refresh_interval"
            )
            ((_, body),) = got.body.items()
            assert body["settings"]["index"]["refresh_interval"] == "-1"
            assert await _all_applied(kafka, indexer, len(backlog))
            body = {"artifacts": {"type": {"any_": ["backlog"]}}}
            assert await wait_answer(client, "/api/artifacts/count", body, 200, 30) == 200
        finally:
            await es.close()


async def _all_applied(kafka: KafkaSettings, indexer: Indexer, records: int) -> bool:
    """Wait until the store's positions on the artifact topic's 3 partitions sum to
    `records` (every record applied and committed); whether they did within 60 s."""
    processor = indexer.processor
    assert processor is not None
    topic = kafka.topic_for("artifact")

    async def applied() -> int:
        return sum(processor.position(topic, p) for p in range(3))

    return bool(await wait_for(applied, lambda n: n == records, 60) == records)


def _keyless_artifact(i: int) -> tuple[str, bytes, bytes]:
    artifact_id = str(uuid.UUID(int=10_000 + i, version=4))
    data = {
        "id": artifact_id,
        "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-01T00:00:00Z",
        "type": "backlog",
        "data": f"item {i}",
    }
    return (
        "artifact",
        artifact_id.encode(),
        encode_event("artifact", artifact_id, "upsert", 1, data),
    )


def _keyed_artifact(key: str, i: int) -> tuple[str, bytes, bytes]:
    artifact_id = str(uuid.uuid4())
    data = {
        "id": artifact_id,
        "created": f"2024-01-01T00:00:0{i}Z",
        "updated": "2024-01-01T00:00:00Z",
        "key": key,
        "type": "markdown",
        "data": f"report {i}",
    }
    return (
        "artifact",
        artifact_id.encode(),
        encode_event("artifact", artifact_id, "upsert", 1, data),
    )

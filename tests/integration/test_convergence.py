"""Convergence on the real servers: any delivery of a noisy stream ends in the oracle's
documents, in Elasticsearch, read back through its own API.

- a property over datasets, stream orders, batch sizes, redelivered suffixes and group
  rewinds, with relationship changes (re-parented runs, artifacts moving between runs and
  keys, `created` years 1..9999), tombstones of unknown ids;
- a zombie: a replica whose partitions moved finishes a batch late, against Elasticsearch's
  own external versioning;
- three replicas in one consumer group through Kafka (member records repartitioned by
  key between them), then the group rewound to offset 0 and restarted.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from elasticsearch import AsyncElasticsearch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datagen.dataset import Dataset, DatasetScale, generate_dataset
from datagen.events import MOVING, dataset_records
from indexer import app as indexer_app
from indexer import parents as indexer_parents
from indexer.app import Indexer
from indexer.local import LocalPipeline
from indexer.store import MemoryStore
from services import kafka as services_kafka
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings
from services.contract import ENTITIES
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames
from tests.kafka_helpers import commit_group, end_offsets
from tests.unit.indexer_oracle import comparable, expected_documents


async def _documents(es: AsyncElasticsearch, index: str) -> dict[str, dict[str, Any]]:
    await es.indices.refresh(index=index)
    resp = await es.search(index=index, query={"term": {"live": True}}, size=10_000)
    return {hit["_id"]: hit["_source"] for hit in resp["hits"]["hits"]}


async def _assert_oracle(es: AsyncElasticsearch, names: IndexNames, dataset: Dataset) -> None:
    arts, cols = expected_documents(dataset)
    got_arts = await _documents(es, names.artifacts)
    got_cols = await _documents(es, names.collections)
    assert comparable(got_arts) == comparable(arts)
    assert comparable(got_cols) == comparable(cols)


def _far_dates(dataset: Dataset, rng: random.Random) -> None:
    for art in dataset.artifacts:
        if rng.random() < 0.15:
            art["created"] = rng.choice(
                ["0001-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999999Z"]
            )


@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), order=st.integers(0, 10_000))
async def test_any_delivery_converges_on_elasticsearch(
    elasticsearch_url: str, seed: int, order: int
) -> None:
    rng = random.Random(order)
    dataset = generate_dataset(seed, DatasetScale.tiny())
    _far_dates(dataset, rng)
    es = AsyncElasticsearch(elasticsearch_url)
    names = IndexNames(f"cv-{uuid.uuid4().hex[:8]}-")
    try:
        await ensure_indices(es, names)
        pipeline = LocalPipeline(es, names)
        records = pipeline.records(dataset_records(dataset, order, MOVING))
        done = 0
        while done < len(records):
            size = rng.choice([3, 40, 300])
            await pipeline.apply(records[done : done + size])
            done += size
            if rng.random() < 0.3:  # a redelivered suffix, other batch boundaries
                start = rng.randrange(done)
                await pipeline.apply(records[start:done])
        await pipeline.apply(records)  # the whole group rewound to offset 0
        await pipeline.finish()
        await _assert_oracle(es, names, dataset)
    finally:
        await drop_indices(es, names)
        await es.close()


async def test_a_zombie_is_fenced_by_elasticsearch_versions(elasticsearch_url: str) -> None:
    """Replica A writes half the stream, replica B (its own store, a newer epoch from the
    control index) writes all of it, then A finishes a batch late: Elasticsearch refuses
    A's older versions and the documents stay B's, the oracle's."""
    dataset = generate_dataset(21, DatasetScale.tiny())
    es = AsyncElasticsearch(elasticsearch_url)
    names = IndexNames(f"cz-{uuid.uuid4().hex[:8]}-")
    try:
        await ensure_indices(es, names)
        a = LocalPipeline(es, names, store=MemoryStore())
        records = a.records(dataset_records(dataset, 21, MOVING))
        half = len(records) // 2
        await a.apply(records[:half])
        b = LocalPipeline(es, names, store=MemoryStore())
        await b.apply(records)
        await b.finish()
        late = await a.apply(records[half:])
        assert late.stats.superseded > 0
        await _assert_oracle(es, names, dataset)
    finally:
        await drop_indices(es, names)
        await es.close()


# --------------------------------------------------------------------------------------------
# three replicas through Kafka
# --------------------------------------------------------------------------------------------
async def _wait_oracle(
    es: AsyncElasticsearch, names: IndexNames, dataset: Dataset, seconds: float
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await _assert_oracle(es, names, dataset)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


@dataclass
class _Servers:
    """A test's own topics (entities and dead letters), indices and clients."""

    kafka: KafkaSettings
    es_settings: ElasticsearchSettings
    names: IndexNames
    es: AsyncElasticsearch
    admin: AIOKafkaAdminClient


@asynccontextmanager
async def _servers(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, partitions: int
) -> AsyncIterator[_Servers]:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"{unique_name}.", group_id=unique_name
    )
    es_settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=f"{unique_name}-")
    names = IndexNames(es_settings.index_prefix)
    es = AsyncElasticsearch(elasticsearch_url)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    topics = [kafka.topic_for(e) for e in ENTITIES] + [kafka.dlq_topic]
    await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    try:
        yield _Servers(kafka, es_settings, names, es, admin)
    finally:
        await admin.delete_topics([*topics, kafka.members_topic])
        await admin.close()
        await drop_indices(es, names)
        await es.close()


async def test_three_replicas_then_a_rewind_converge(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, tmp_path: Path
) -> None:
    dataset = generate_dataset(31, DatasetScale.for_artifacts(600))
    async with _servers(kafka_bootstrap, elasticsearch_url, unique_name, 4) as servers:
        await _three_replicas_then_a_rewind(servers, dataset, tmp_path)


async def _three_replicas_then_a_rewind(
    servers: _Servers, dataset: Dataset, tmp_path: Path
) -> None:
    kafka, es, names, admin = servers.kafka, servers.es, servers.names, servers.admin

    def replica(name: str) -> Indexer:
        settings = IndexerSettings(
            state_dir=str(tmp_path / name), instance_id=name, max_batch=300, retry_max_s=1
        )
        return Indexer(kafka, servers.es_settings, settings)

    replicas: list[Indexer] = []
    try:
        for name in ("a", "b", "c"):
            replicas.append(replica(name))
            await replicas[-1].start()
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for entity, key, value in dataset_records(dataset, 31, MOVING):
                await producer.send(kafka.topic_for(entity), value=value, key=key)
            await producer.flush()
        finally:
            await producer.stop()
        await _wait_oracle(es, names, dataset, 120)
        assert sum(1 for r in replicas if r.processor and r.processor.active) >= 2
        for r in replicas:
            await r.stop()
        replicas.clear()
        # rewind the whole group to offset 0 and restart: the stores know what was applied
        committed = await admin.list_consumer_group_offsets(kafka.group_id)
        rewound = {tp: 0 for tp in committed}
        await commit_group(kafka.bootstrap_servers, kafka.group_id, rewound)
        after = await admin.list_consumer_group_offsets(kafka.group_id)
        assert {tp: meta.offset for tp, meta in after.items()} == rewound
        for name in ("a", "b", "c"):
            replicas.append(replica(name))
            await replicas[-1].start()
        assert rewound, "the group had committed offsets to rewind"
        await asyncio.sleep(5)  # the restarted group settles and reads whatever it reads
        await _wait_oracle(es, names, dataset, 60)
    finally:
        for r in replicas:
            await r.stop()


@pytest.mark.parametrize("lost", ["rewound", "never_committed"])
async def test_a_restarted_replica_shows_its_positions_to_lag_monitoring(
    kafka_bootstrap: str,
    elasticsearch_url: str,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lost: str,
) -> None:
    """Kafka's group offsets only serve monitoring; the store holds the positions. A replica
    that restarts with nothing new to consume commits its store's positions once its
    partitions are assigned, so a rewound group, or a run whose commits to Kafka were lost
    (stopped before them; here: never made), does not show a lag for ever. The second case
    runs with static membership, as the StatefulSet does (a commit awaited inside the
    assignment callback deadlocked there: the group rejoined over and over)."""
    dataset = generate_dataset(5, DatasetScale.for_artifacts(120))
    settings = IndexerSettings(
        state_dir=str(tmp_path / "a"),
        instance_id="a",
        retry_max_s=1,
        static_membership=lost == "never_committed",
    )
    async with _servers(kafka_bootstrap, elasticsearch_url, unique_name, 2) as servers:
        kafka, admin = servers.kafka, servers.admin
        groups = [kafka.group_id, f"{kafka.group_id}.global.a"]
        if lost == "never_committed":
            with monkeypatch.context() as patch:
                for module in (indexer_app, indexer_parents, services_kafka):
                    patch.setattr(module, "commit_offsets", _no_commit)
                indexer = await _converge(servers, settings, dataset)
        else:
            indexer = await _converge(servers, settings, dataset)
        try:
            await indexer.stop()
            topics = [*(kafka.topic_for(e) for e in ENTITIES), kafka.members_topic]
            ends = await end_offsets(kafka.bootstrap_servers, topics)
            assert all(end > 0 for tp, end in ends.items() if "artifact" in tp.topic)
            before: dict[Any, int] = {}
            for group in groups:
                committed = await admin.list_consumer_group_offsets(group)
                before.update({tp: meta.offset for tp, meta in committed.items()})
                if lost == "rewound":  # both groups to 0, as `--reset-offsets` would
                    await commit_group(kafka.bootstrap_servers, group, {tp: 0 for tp in committed})
            assert (before == ends) == (lost == "rewound")  # the commits were made, or not
            indexer = Indexer(kafka, servers.es_settings, settings)
            await indexer.start()
            deadline = time.monotonic() + 60
            while True:
                got: dict[Any, int] = {}
                for group in groups:
                    offsets = await admin.list_consumer_group_offsets(group)
                    got.update({tp: meta.offset for tp, meta in offsets.items()})
                if got == ends:
                    break
                assert time.monotonic() < deadline, {tp: (got.get(tp), e) for tp, e in ends.items()}
                await asyncio.sleep(0.5)
            await _assert_oracle(servers.es, servers.names, dataset)  # re-applied nothing wrong
        finally:
            await indexer.stop()


async def _no_commit(consumer: Any, positions: Any) -> None:
    return None


async def _converge(servers: _Servers, settings: IndexerSettings, dataset: Dataset) -> Indexer:
    """A started indexer that applied the whole dataset, published here."""
    kafka = servers.kafka
    indexer = Indexer(kafka, servers.es_settings, settings)
    await indexer.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for entity, key, value in dataset_records(dataset, 5):
            await producer.send(kafka.topic_for(entity), value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    await _wait_oracle(servers.es, servers.names, dataset, 120)
    return indexer

"""Convergence property: any interleaving, duplicates and stale versions, any batch split.

For random small datasets, the noisy event stream in a random cross-entity order,
cut into random batch sizes, must produce exactly the same documents as the
clean in-order stream, and those documents must hold what the dataset says
(live artifacts and collections computed independently in Python).
"""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from typing import Any

from elasticsearch import AsyncElasticsearch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.engine import Engine
from indexer.sink import Sink
from services.contract import parse_record
from services.datagen import DatasetScale, generate_dataset
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames
from services.events import HARD, NONE, Noise, dataset_records

RESPONSE_ONLY = ("prev_keys", "version")  # bookkeeping: versions differ per stream seed


async def _load(
    es: AsyncElasticsearch, names: IndexNames, records: list[Any], rng: random.Random
) -> None:
    engine = Engine(Sink(es, names))
    events = [parse_record(entity, key, value) for entity, key, value in records]
    start = 0
    while start < len(events):
        size = rng.choice([3, 40, 300])
        await engine.apply(events[start : start + size])
        start += size
    await es.indices.refresh(index=",".join(names.all_aliases()))


async def _documents(es: AsyncElasticsearch, index: str) -> dict[str, dict[str, Any]]:
    resp = await es.search(index=index, query={"match_all": {}}, size=10_000)
    return {
        hit["_id"]: {k: v for k, v in hit["_source"].items() if k not in RESPONSE_ONLY}
        for hit in resp["hits"]["hits"]
    }


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(min_value=0, max_value=10_000), order=st.integers(0, 10_000))
async def test_noisy_streams_converge_to_the_in_order_result(
    elasticsearch_url: str, seed: int, order: int
) -> None:
    dataset = generate_dataset(seed, DatasetScale.tiny())
    es = AsyncElasticsearch(elasticsearch_url)
    runs: list[tuple[IndexNames, Noise, int]] = [
        (IndexNames(f"cv-{uuid.uuid4().hex[:8]}-"), NONE, 0),
        (IndexNames(f"cv-{uuid.uuid4().hex[:8]}-"), HARD, order),
        (IndexNames(f"cv-{uuid.uuid4().hex[:8]}-"), HARD, order + 1),
    ]
    try:
        results = []
        for names, noise, stream_seed in runs:
            await ensure_indices(es, names)
            records = dataset_records(dataset, stream_seed, noise)
            await _load(es, names, records, random.Random(stream_seed))
            results.append(
                (
                    await _documents(es, names.artifacts),
                    await _documents(es, names.collections),
                    await _documents(es, names.entities),
                )
            )
        clean, *noisy = results
        for other in noisy:
            assert other[0] == clean[0], "artifact documents differ from in-order processing"
            assert other[1] == clean[1], "collection documents differ from in-order processing"
        artifacts, collections, _ = clean
        live = {doc_id: doc for doc_id, doc in artifacts.items() if doc["live"]}
        expected = {a["id"]: a for a in dataset.artifacts}
        assert set(live) == set(expected)
        for doc_id, doc in live.items():
            assert {k: doc.get(k) for k in expected[doc_id]} == expected[doc_id]
        want_collections = {c["id"]: c for c in dataset.collections()}
        assert set(collections) == set(want_collections)
        for doc_id, doc in collections.items():
            want = want_collections[doc_id]
            assert {k: doc.get(k) for k in want} == want
    finally:
        for names, _, _ in runs:
            await drop_indices(es, names)
        await es.close()


async def _load_concurrently(
    es: AsyncElasticsearch, names: IndexNames, records: list[Any], rng: random.Random, writers: int
) -> None:
    """Like Kafka partitions: records split by key (per-key order kept), one engine each,
    all applying their batches at the same time against the same indices."""
    parts: list[list[Any]] = [[] for _ in range(writers)]
    for record in records:
        parts[zlib.crc32(record[1]) % writers].append(parse_record(*record))
    sizes = [[rng.choice([3, 40, 300]) for _ in range(len(part))] for part in parts]

    async def run(events: list[Any], batch_sizes: list[int]) -> None:
        engine = Engine(Sink(es, names))
        start = 0
        for size in batch_sizes:
            if start >= len(events):
                return
            await engine.apply(events[start : start + size])
            start += size

    async with asyncio.TaskGroup() as group:  # a failing writer cancels the others
        for part, batch_sizes in zip(parts, sizes, strict=True):
            group.create_task(run(part, batch_sizes))
    await es.indices.refresh(index=",".join(names.all_aliases()))


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(min_value=0, max_value=10_000), order=st.integers(0, 10_000))
async def test_concurrent_writers_converge_to_the_in_order_result(
    elasticsearch_url: str, seed: int, order: int
) -> None:
    """Three engines racing on shared indices (compare-and-set, merges, rebuilds, fan-out)
    end with the documents of one engine fed the clean stream."""
    dataset = generate_dataset(seed, DatasetScale.tiny())
    es = AsyncElasticsearch(elasticsearch_url)
    clean_names = IndexNames(f"cv-{uuid.uuid4().hex[:8]}-")
    racing_names = IndexNames(f"cv-{uuid.uuid4().hex[:8]}-")
    try:
        await ensure_indices(es, clean_names)
        await _load(es, clean_names, dataset_records(dataset, 0, NONE), random.Random(0))
        await ensure_indices(es, racing_names)
        records = dataset_records(dataset, order, HARD)
        await _load_concurrently(es, racing_names, records, random.Random(order), writers=3)
        for kind in ("artifacts", "collections"):
            clean = await _documents(es, getattr(clean_names, kind))
            racing = await _documents(es, getattr(racing_names, kind))
            assert racing == clean, f"{kind} differ after concurrent writers"
    finally:
        await drop_indices(es, clean_names)
        await drop_indices(es, racing_names)
        await es.close()

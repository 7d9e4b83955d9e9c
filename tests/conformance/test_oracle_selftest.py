"""Self-test of the oracle: Prefect on PostgreSQL answers what the dataset implies.

The expected values are computed here, in plain Python, from the generated
dataset, independently of Prefect and of the project's translator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from datagen.dataset import (
    Dataset,
    DatasetScale,
    collection_id,
    generate_dataset,
    timestamp_us,
)
from tests.conformance.bodies import ENDPOINTS, coverage_size, generate_bodies
from tests.conformance.oracle import PrefectOracle

SEED = 20240601
PAGE = 200


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate_dataset(SEED, DatasetScale())


@pytest.fixture(scope="module")
async def oracle(postgres_dsn: str, dataset: Dataset) -> AsyncIterator[PrefectOracle]:
    async with PrefectOracle(postgres_dsn, dataset) as running:
        yield running


def _key_bytes(key: str | None) -> tuple[int, bytes]:
    """PostgreSQL ``ORDER BY key ASC`` under the C collation: bytes, NULLs last."""
    return (1, b"") if key is None else (0, key.encode("utf-8"))


async def _all_pages(oracle: PrefectOracle, path: str, body: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    offset = 0
    while True:
        status, page = await oracle.post(path, {**body, "limit": PAGE, "offset": offset})
        assert status == 200, page
        out.extend(page)
        if len(page) < PAGE:
            return out
        offset += PAGE


async def test_counts(oracle: PrefectOracle, dataset: Dataset) -> None:
    assert await oracle.post("/artifacts/count", {}) == (200, len(dataset.artifacts))
    keys = {a["key"] for a in dataset.artifacts if a["key"] is not None}
    assert await oracle.post("/artifacts/latest/count", {}) == (200, len(keys))
    null_keys = sum(1 for a in dataset.artifacts if a["key"] is None)
    status, count = await oracle.post(
        "/artifacts/count", {"artifacts": {"key": {"exists_": False}}}
    )
    assert (status, count) == (200, null_keys)


async def test_default_page_is_id_desc(oracle: PrefectOracle, dataset: Dataset) -> None:
    status, page = await oracle.post("/artifacts/filter", {})
    assert status == 200
    expected = sorted((a["id"] for a in dataset.artifacts), reverse=True)[:PAGE]
    assert [a["id"] for a in page] == expected


async def test_artifacts_round_trip(oracle: PrefectOracle, dataset: Dataset) -> None:
    by_id = {a["id"]: a for a in dataset.artifacts}
    every = await _all_pages(oracle, "/artifacts/filter", {"sort": "ID_DESC"})
    assert len(every) == len(dataset.artifacts)
    for artifact in every:
        assert artifact == by_id[artifact["id"]]
    whole_second = next(a for a in dataset.artifacts if "." not in a["created"])
    for artifact in (dataset.artifacts[0], whole_second):
        assert await oracle.get(f"/artifacts/{artifact['id']}") == (200, artifact)


async def test_key_asc_is_byte_order_nulls_last(oracle: PrefectOracle, dataset: Dataset) -> None:
    every = await _all_pages(oracle, "/artifacts/filter", {"sort": "KEY_ASC"})
    expected = sorted((a["key"] for a in dataset.artifacts), key=_key_bytes)
    # Prefect sorts on the key alone: the order inside one key is unspecified
    assert [a["key"] for a in every] == expected
    every = await _all_pages(oracle, "/artifacts/filter", {"sort": "KEY_DESC"})
    assert [a["key"] for a in every] == expected[::-1]  # NULL keys first
    collections = await _all_pages(oracle, "/artifacts/latest/filter", {"sort": "KEY_DESC"})
    keys = sorted({a["key"] for a in dataset.artifacts if a["key"] is not None}, key=_key_bytes)
    assert [c["key"] for c in collections] == keys[::-1]


async def test_collection_of_a_shared_key(oracle: PrefectOracle, dataset: Dataset) -> None:
    counts = Counter(a["key"] for a in dataset.artifacts if a["key"] is not None)
    key = max(counts, key=lambda k: (counts[k], k))
    assert counts[key] > 1
    members = [a for a in dataset.artifacts if a["key"] == key]
    latest = max(members, key=lambda a: (timestamp_us(a["created"]), a["id"]))
    first = min(members, key=lambda a: timestamp_us(a["created"]))
    expected = {
        "id": collection_id(key),
        "created": first["created"],
        "updated": latest["created"],
        "key": key,
        "latest_id": latest["id"],
        "type": latest["type"],
        "description": latest["description"],
        "data": latest["data"],
        "metadata_": latest["metadata_"],
        "flow_run_id": latest["flow_run_id"],
        "task_run_id": latest["task_run_id"],
    }
    status, page = await oracle.post(
        "/artifacts/latest/filter", {"artifacts": {"key": {"any_": [key]}}}
    )
    assert (status, page) == (200, [expected])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_generated_bodies_never_5xx(
    oracle: PrefectOracle, dataset: Dataset, endpoint: str
) -> None:
    n = coverage_size(dataset, endpoint) + 60
    failures: list[tuple[dict[str, Any], int, Any]] = []
    statuses: Counter[int] = Counter()
    for body in generate_bodies(SEED, dataset, n, endpoint):
        status, answer = await oracle.post(endpoint, body)
        statuses[status] += 1
        if status >= 500:
            failures.append((body, status, answer))
        elif status == 200 and endpoint.endswith("/filter"):
            limit = body.get("limit")
            assert len(answer) <= (PAGE if limit is None else limit)
        elif status == 200:
            assert isinstance(answer, int)
    assert not failures, failures
    assert statuses[200] > n // 2, statuses

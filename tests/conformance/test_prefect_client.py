"""Prefect's own client, pointed at this service over real HTTP, gets Prefect's answers.

The service runs under uvicorn on a free 127.0.0.1 port (a background thread)
over an index loaded through the indexer engine; ``PREFECT_API_URL`` points at
it and ``prefect.client.orchestration.get_client()`` calls ``read_artifacts`` /
``read_latest_artifacts`` with Prefect's filter objects, sorts, limits and
offsets. The same calls go through a second ``PrefectClient`` to the oracle
(Prefect 3.9.1 on PostgreSQL, same dataset) and the returned client model
objects must be equal (their JSON dumps; rows that tie on the sort column may
come in any order, as in Prefect, so tie groups are compared as sets).

The extra routes the client touches are exercised too: ``/csrf-token`` before
every POST (the service answers like a Prefect server with CSRF protection
disabled), ``/health`` (``api_healthcheck``) and ``/admin/version``
(``api_version`` and ``raise_for_api_version_mismatch``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from elasticsearch import AsyncElasticsearch
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactCollectionFilterLatestId,
    ArtifactCollectionFilterType,
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterId,
    ArtifactFilterKey,
    ArtifactFilterTaskRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterName,
    TaskRunFilterStartTime,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import ArtifactCollectionSort, ArtifactSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from datagen.dataset import Dataset, DatasetScale, generate_dataset, parse_timestamp
from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames
from tests.conformance.oracle import PrefectOracle
from tests.conformance.test_differential import load_through_indexer
from tests.serving import ServerThread

SEED = 23
SCALE = DatasetScale(flows=6, deployments=5, flow_runs=50, task_runs=120, artifacts=400)
SORT_FIELD = {
    "ID_DESC": "id",
    "CREATED_DESC": "created",
    "UPDATED_DESC": "updated",
    "KEY_DESC": "key",
    "KEY_ASC": "key",
}


@pytest.fixture(scope="module")
async def setup(
    postgres_dsn: str, elasticsearch_url: str
) -> AsyncIterator[tuple[Dataset, PrefectOracle, str]]:
    dataset = generate_dataset(SEED, SCALE)
    es = AsyncElasticsearch(elasticsearch_url)
    names = IndexNames(f"pcli-{uuid.uuid4().hex[:8]}-")
    await ensure_indices(es, names)
    try:
        await load_through_indexer(es, names, dataset, SEED)
        app = create_app(
            QuerySettings(), ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix)
        )
        with ServerThread(app) as server:
            async with PrefectOracle(postgres_dsn, dataset) as oracle:
                yield dataset, oracle, server.api_url
    finally:
        await drop_indices(es, names)
        await es.close()


@pytest.fixture
def service_url(setup: tuple[Dataset, PrefectOracle, str]) -> Iterator[str]:
    with temporary_settings({PREFECT_API_URL: setup[2]}):
        yield setup[2]


def oracle_client(oracle: PrefectOracle) -> PrefectClient:
    client = PrefectClient(oracle.app)
    client.manage_lifespan = False  # the oracle's app runs without its lifespan
    return client


def _dump(rows: list[Any]) -> list[dict[str, Any]]:
    return [row.model_dump(mode="json") for row in rows]


def _groups(rows: list[dict[str, Any]], field: str) -> list[tuple[Any, set[str]]]:
    out: list[tuple[Any, set[str]]] = []
    for row in rows:
        if out and out[-1][0] == row[field]:
            out[-1][1].add(row["id"])
        else:
            out.append((row[field], {row["id"]}))
    return out


async def _read(client: PrefectClient, latest: bool, kwargs: dict[str, Any]) -> list[Any]:
    if latest:
        return await client.read_latest_artifacts(**kwargs)
    return await client.read_artifacts(**kwargs)


async def _everything(client: PrefectClient, latest: bool, kwargs: dict[str, Any]) -> set[str]:
    """Ids of every row the oracle matches for ``kwargs``, ignoring the window."""
    base = {k: v for k, v in kwargs.items() if k not in ("limit", "offset", "sort")}
    sort = ArtifactCollectionSort.ID_DESC if latest else ArtifactSort.ID_DESC
    out: set[str] = set()
    offset = 0
    while True:
        page = await _read(client, latest, {**base, "sort": sort, "limit": 200, "offset": offset})
        out.update(str(row.id) for row in page)
        if len(page) < 200:
            return out
        offset += 200


async def _difference(
    oracle: PrefectClient,
    service: PrefectClient,
    latest: bool,
    kwargs: dict[str, Any],
    sizes: list[int],
) -> str | None:
    want = _dump(await _read(oracle, latest, kwargs))
    got = _dump(await _read(service, latest, kwargs))
    sizes.append(len(want))
    if len(want) != len(got):
        return f"{len(got)} rows != oracle {len(want)}"
    sort = kwargs.get("sort")
    field = SORT_FIELD[sort.value if sort is not None else "ID_DESC"]
    want_groups, got_groups = _groups(want, field), _groups(got, field)
    if [(k, len(ids)) for k, ids in want_groups] != [(k, len(ids)) for k, ids in got_groups]:
        return "sort-key sequence differs"
    last = len(want_groups) - 1
    everything: set[str] | None = None
    for index, ((_, want_ids), (_, got_ids)) in enumerate(
        zip(want_groups, got_groups, strict=True)
    ):
        if want_ids == got_ids:
            continue
        if 0 < index < last:
            return f"tie group {index} holds other ids"
        if everything is None:  # a page boundary cut this tie group
            everything = await _everything(oracle, latest, kwargs)
        if not got_ids <= everything:
            return f"ids {got_ids - everything} do not match in Prefect"
    by_id = {row["id"]: row for row in want}
    for row in got:
        if row["id"] in by_id and by_id[row["id"]] != row:
            return f"object differs: {row} != {by_id[row['id']]}"
    return None


def _artifact_cases(dataset: Dataset) -> list[dict[str, Any]]:
    arts = dataset.artifacts
    keys = sorted({a["key"] for a in arts if a["key"] is not None})
    run = next(a["flow_run_id"] for a in arts if a["flow_run_id"] is not None)
    task = next(a["task_run_id"] for a in arts if a["task_run_id"] is not None)
    runs = dataset.flow_runs
    tag = next(t for r in runs for t in r.get("tags") or [])
    started = sorted(r["start_time"] for r in runs if r.get("start_time"))
    middle = parse_timestamp(started[len(started) // 2])
    task_started = sorted(t["start_time"] for t in dataset.task_runs if t.get("start_time"))
    cases: list[dict[str, Any]] = [{}]
    cases += [{"sort": s, "limit": 20} for s in ArtifactSort]
    cases += [{"sort": s, "limit": 15, "offset": 37} for s in ArtifactSort]
    cases += [
        {"limit": 0},
        {"offset": 395},
        {"offset": 10_000, "limit": 5},
        {"artifact_filter": ArtifactFilter(key=ArtifactFilterKey(any_=keys[:3]))},
        {"artifact_filter": ArtifactFilter(key=ArtifactFilterKey(like_="rep"))},
        {"artifact_filter": ArtifactFilter(key=ArtifactFilterKey(like_="%_b"))},
        {"artifact_filter": ArtifactFilter(key=ArtifactFilterKey(exists_=False)), "limit": 50},
        {
            "artifact_filter": ArtifactFilter(
                type=ArtifactFilterType(any_=["markdown", "table"], not_any_=["table"])
            ),
            "sort": ArtifactSort.KEY_ASC,
        },
        {"artifact_filter": ArtifactFilter(id=ArtifactFilterId(any_=[a["id"] for a in arts[:9]]))},
        {"artifact_filter": ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run]))},
        {"artifact_filter": ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[task]))},
        {
            "artifact_filter": ArtifactFilter(
                operator="or_",
                key=ArtifactFilterKey(any_=keys[:1]),
                type=ArtifactFilterType(any_=["link"]),
            ),
            "sort": ArtifactSort.CREATED_DESC,
        },
        {
            "flow_run_filter": FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED])
                )
            ),
            "sort": ArtifactSort.UPDATED_DESC,
        },
        {"flow_run_filter": FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))},
        {"flow_run_filter": FlowRunFilter(start_time=FlowRunFilterStartTime(after_=middle))},
        {
            "flow_run_filter": FlowRunFilter(
                start_time=FlowRunFilterStartTime(before_=middle + timedelta(microseconds=1))
            ),
            "sort": ArtifactSort.KEY_DESC,
        },
        {"flow_run_filter": FlowRunFilter(name=FlowRunFilterName(like_="a"))},
        {"flow_run_filter": FlowRunFilter()},
        {
            "flow_run_filter": FlowRunFilter(
                operator="or_",
                tags=FlowRunFilterTags(all_=[tag]),
                name=FlowRunFilterName(like_="x"),
            )
        },
        {"task_run_filter": TaskRunFilter()},
        {"task_run_filter": TaskRunFilter(name=TaskRunFilterName(like_="t"))},
        {
            "task_run_filter": TaskRunFilter(
                start_time=TaskRunFilterStartTime(
                    before_=parse_timestamp(task_started[len(task_started) // 2])
                )
            ),
            "flow_run_filter": FlowRunFilter(tags=FlowRunFilterTags(is_null_=False)),
            "sort": ArtifactSort.CREATED_DESC,
            "limit": 30,
            "offset": 3,
        },
    ]
    return cases


def _collection_cases(dataset: Dataset) -> list[dict[str, Any]]:
    collections = dataset.collections()
    keys = [c["key"] for c in collections]
    cases: list[dict[str, Any]] = [{}]
    cases += [{"sort": s, "limit": 10} for s in ArtifactCollectionSort]
    cases += [{"sort": s, "limit": 7, "offset": 11} for s in ArtifactCollectionSort]
    cases += [
        {"limit": 0},
        {"artifact_filter": ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys))},
        {"artifact_filter": ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(like_="-1"))},
        {
            "artifact_filter": ArtifactCollectionFilter(
                latest_id=ArtifactCollectionFilterLatestId(
                    any_=[c["latest_id"] for c in collections[:5]]
                )
            )
        },
        {
            "artifact_filter": ArtifactCollectionFilter(
                type=ArtifactCollectionFilterType(not_any_=["markdown"])
            ),
            "sort": ArtifactCollectionSort.KEY_DESC,
        },
        {
            "flow_run_filter": FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
            )
        },
        {"task_run_filter": TaskRunFilter(), "sort": ArtifactCollectionSort.UPDATED_DESC},
    ]
    return cases


async def test_get_client_reads_artifacts_like_prefect(
    setup: tuple[Dataset, PrefectOracle, str], service_url: str
) -> None:
    dataset, oracle, _ = setup
    problems = []
    sizes: list[int] = []
    async with get_client() as service, oracle_client(oracle) as reference:
        assert str(service.api_url).rstrip("/") == service_url
        for kwargs in _artifact_cases(dataset):
            if problem := await _difference(reference, service, False, kwargs, sizes):
                problems.append(("read_artifacts", kwargs, problem))
        for kwargs in _collection_cases(dataset):
            if problem := await _difference(reference, service, True, kwargs, sizes):
                problems.append(("read_latest_artifacts", kwargs, problem))
    assert not problems, f"{len(problems)} differences, first: {problems[:3]}"
    # the cases are not vacuous: most calls return rows, some fill their page
    assert len(sizes) == 51 and sum(n > 0 for n in sizes) >= 40 and max(sizes) == 200, sizes


async def test_client_housekeeping_calls(
    setup: tuple[Dataset, PrefectOracle, str], service_url: str
) -> None:
    _, oracle, _ = setup
    async with get_client() as service, oracle_client(oracle) as reference:
        assert await service.api_healthcheck() is None
        assert await service.api_version() == await reference.api_version() == "3.9.1"
        await service.raise_for_api_version_mismatch()  # neither raises nor warns
        # the first POST asked for a CSRF token; the answer switched CSRF support off
        await service.read_artifacts(limit=1)
        assert service._client.enable_csrf_support is False
    want = await oracle.client.get("/csrf-token", params={"client": "x"})
    async with httpx.AsyncClient(base_url=service_url) as raw:
        got = await raw.get("/csrf-token", params={"client": "x"})
        assert (got.status_code, got.json()) == (want.status_code, want.json())
        for path in ("/health", "/admin/version"):
            want = await oracle.client.get(path)
            got = await raw.get(path)
            assert (got.status_code, got.json()) == (want.status_code, want.json()), path


async def test_sync_client_too(setup: tuple[Dataset, PrefectOracle, str], service_url: str) -> None:
    _, oracle, _ = setup

    def read() -> list[dict[str, Any]]:
        with get_client(sync_client=True) as client:
            return _dump(client.read_artifacts(sort=ArtifactSort.ID_DESC, limit=25, offset=5))

    got = await asyncio.to_thread(read)
    async with oracle_client(oracle) as reference:
        want = _dump(await reference.read_artifacts(sort=ArtifactSort.ID_DESC, limit=25, offset=5))
    assert got == want and len(got) == 25

"""The indexer engine against a real Elasticsearch node: entity types, order, deletes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from indexer.engine import Engine
from indexer.sink import Sink
from services.contract import Event, parse_record
from services.contract import encode_event as enc
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def ev(
    entity: str,
    data: dict[str, Any] | None,
    version: int,
    op: str = "upsert",
    eid: str | None = None,
) -> Event:
    """An event as the indexer would parse it off Kafka."""
    entity_id = eid or (data or {})["id"]
    if op == "tombstone":
        return parse_record(entity, entity_id.encode(), None)
    return parse_record(entity, entity_id.encode(), enc(entity, entity_id, op, version, data))


def uid() -> str:
    return str(uuid.uuid4())


def ts(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


@pytest.fixture
async def engine(
    elasticsearch_url: str, unique_name: str
) -> AsyncIterator[tuple[Engine, AsyncElasticsearch, IndexNames]]:
    es = AsyncElasticsearch(elasticsearch_url)
    names = IndexNames(f"{unique_name}-")
    await ensure_indices(es, names)
    try:
        yield Engine(Sink(es, names)), es, names
    finally:
        await drop_indices(es, names)
        await es.close()


async def get(es: AsyncElasticsearch, index: str, doc_id: str) -> dict[str, Any] | None:
    resp = await es.options(ignore_status=404).get(index=index, id=doc_id)
    return resp.get("_source") if resp.get("found") else None


def flow(fid: str, name: str = "My-Flow") -> dict[str, Any]:
    return {"id": fid, "created": ts(0), "updated": ts(0), "name": name, "tags": ["a"]}


def flow_run(frid: str, fid: str, **kw: Any) -> dict[str, Any]:
    base = {
        "id": frid,
        "created": ts(1),
        "updated": ts(1),
        "name": "run-1",
        "flow_id": fid,
        "state_type": "COMPLETED",
        "state_name": "Completed",
        "tags": [],
    }
    base.update(kw)
    return base


def artifact(aid: str, key: str | None, created: int, **kw: Any) -> dict[str, Any]:
    base = {
        "id": aid,
        "created": ts(created),
        "updated": ts(created),
        "key": key,
        "type": "markdown",
        "data": {"x": 1},
    }
    base.update(kw)
    return base


async def test_artifact_before_its_flow_run_converges(engine: Any) -> None:
    eng, es, names = engine
    fid, frid, aid = uid(), uid(), uid()
    await eng.apply([ev("artifact", artifact(aid, "k1", 5, flow_run_id=frid), 1)])
    doc = await get(es, names.artifacts, aid)
    assert doc is not None and "fr" not in doc and doc["live"] is True
    await eng.apply([ev("flow_run", flow_run(frid, fid), 1)])
    doc = await get(es, names.artifacts, aid)
    assert doc is not None and doc["fr"]["state_type"] == "COMPLETED"
    assert "flow" not in doc
    await eng.apply([ev("flow", flow(fid), 1)])
    doc = await get(es, names.artifacts, aid)
    assert doc is not None and doc["flow"]["name_ci"] == "my-flow"
    assert doc["flow"]["has_deployment"] is False
    # the collection follows the artifact
    coll = await es.search(index=names.collections, query={"term": {"key": "k1"}})
    hits = coll["hits"]["hits"]
    assert len(hits) == 1 and hits[0]["_source"]["latest_id"] == aid
    assert hits[0]["_source"]["fr"]["id"] == frid


async def test_stale_and_duplicate_versions_are_ignored(engine: Any) -> None:
    eng, es, names = engine
    fid, frid = uid(), uid()
    aid = uid()
    await eng.apply([ev("artifact", artifact(aid, None, 1, flow_run_id=frid), 1)])
    await eng.apply([ev("flow_run", flow_run(frid, fid, state_type="RUNNING"), 5)])
    await eng.apply(
        [
            ev("flow_run", flow_run(frid, fid, state_type="FAILED"), 3),
            ev("flow_run", flow_run(frid, fid, state_type="RUNNING"), 5),
        ]
    )
    doc = await get(es, names.artifacts, aid)
    assert doc is not None and doc["fr"]["state_type"] == "RUNNING"


async def test_deletes_and_tombstones(engine: Any) -> None:
    eng, es, names = engine
    fid, frid = uid(), uid()
    a1, a2 = uid(), uid()
    await eng.apply(
        [
            ev("flow_run", flow_run(frid, fid), 1),
            ev("artifact", artifact(a1, "key", 1, flow_run_id=frid), 1),
            ev("artifact", artifact(a2, "key", 2, flow_run_id=frid), 1),
        ]
    )
    coll = await get(es, names.collections, _coll_id("key"))
    assert coll is not None and coll["latest_id"] == a2
    assert coll["created"] == ts(1).replace("+00:00", "Z")
    # deleting the latest moves `latest` back
    await eng.apply([ev("artifact", None, 2, op="delete", eid=a2)])
    coll = await get(es, names.collections, _coll_id("key"))
    assert coll is not None and coll["latest_id"] == a1
    # a stale upsert of the deleted artifact changes nothing
    await eng.apply([ev("artifact", artifact(a2, "key", 2, flow_run_id=frid), 1)])
    coll = await get(es, names.collections, _coll_id("key"))
    assert coll is not None and coll["latest_id"] == a1
    # deleting the flow run makes the reference unknown but keeps the artifact
    await eng.apply([ev("flow_run", None, 0, op="tombstone", eid=frid)])
    doc = await get(es, names.artifacts, a1)
    assert doc is not None and doc["live"] and "fr" not in doc
    # a later upsert brings the flow run back
    await eng.apply([ev("flow_run", flow_run(frid, fid, state_type="CRASHED"), 7)])
    doc = await get(es, names.artifacts, a1)
    assert doc is not None and doc["fr"]["state_type"] == "CRASHED"
    # the last artifact of a key gone: no collection
    await eng.apply([ev("artifact", None, 0, op="tombstone", eid=a1)])
    assert await get(es, names.collections, _coll_id("key")) is None


async def test_derived_relations(engine: Any) -> None:
    eng, es, names = engine
    fid, parent_run, child_run, trid, aid_parent_tr, aid_child = (
        uid(),
        uid(),
        uid(),
        uid(),
        uid(),
        uid(),
    )
    dep = uid()
    await eng.apply(
        [
            ev("artifact", artifact(aid_parent_tr, None, 1, task_run_id=trid), 1),
            ev("artifact", artifact(aid_child, None, 2, flow_run_id=child_run), 1),
        ]
    )
    # the subflow arrives before its parent task run
    await eng.apply(
        [ev("flow_run", flow_run(child_run, fid, parent_task_run_id=trid, deployment_id=dep), 1)]
    )
    await eng.apply(
        [
            ev(
                "task_run",
                {
                    "id": trid,
                    "created": ts(0),
                    "updated": ts(0),
                    "name": "t",
                    "flow_run_id": parent_run,
                },
                1,
            )
        ]
    )
    doc = await get(es, names.artifacts, aid_parent_tr)
    assert doc is not None and doc["tr"]["has_subflow_run"] is True
    doc = await get(es, names.artifacts, aid_child)
    assert doc is not None and doc["fr"]["parent_flow_run_id"] == parent_run
    assert "dep" not in doc
    await eng.apply([ev("flow", flow(fid, "Parent"), 1)])
    await eng.apply(
        [
            ev(
                "deployment",
                {
                    "id": dep,
                    "created": ts(0),
                    "updated": ts(0),
                    "name": "D",
                    "flow_id": fid,
                    "paused": True,
                },
                1,
            )
        ]
    )
    doc = await get(es, names.artifacts, aid_child)
    assert doc is not None and doc["flow"]["has_deployment"] is True
    assert doc["dep"]["flow_name_ci"] == "parent" and doc["dep"]["paused"] is True
    # moving the subflow away clears has_subflow_run
    await eng.apply([ev("flow_run", flow_run(child_run, fid, deployment_id=dep), 2)])
    doc = await get(es, names.artifacts, aid_parent_tr)
    assert doc is not None and doc["tr"]["has_subflow_run"] is False
    # deleting the deployment clears has_deployment and dep
    await eng.apply([ev("deployment", None, 5, op="delete", eid=dep)])
    doc = await get(es, names.artifacts, aid_child)
    assert doc is not None and doc["flow"]["has_deployment"] is False and "dep" not in doc


def _coll_id(key: str) -> str:
    from services.documents import collection_id

    return collection_id(key)

"""Error answers are Prefect's: same status and the same JSON body, byte for byte decoded.

Every body of ``bodies.INVALID_BODIES`` plus the cases below (wrong types at each
nesting level, unknown keys inside filters, bad enum values and UUIDs, bad
``limit``/``offset``, non-object bodies, bodies that are not JSON, empty bodies,
other content types) is sent to Prefect 3.9.1 (the oracle) and to the service on
all four POST endpoints; the status and the decoded JSON body must be equal.
Valid bodies among them (the count endpoints ignore ``sort``/``limit``/``offset``,
``null`` means absent, ...) must get equal answers too, over the same tiny dataset.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from elasticsearch import AsyncElasticsearch

from datagen.dataset import Dataset, DatasetScale, generate_dataset
from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames
from tests.conformance.bodies import ENDPOINTS, INVALID_BODIES
from tests.conformance.oracle import PrefectOracle
from tests.conformance.test_differential import load_through_indexer

SEED = 5
UUID = "0f9e5d1c-7a0b-4c2d-8e3f-1a2b3c4d5e6f"

# Each level of a filter gets a wrong type, an unknown key and (where it has one)
# a bad enum value; leaves get wrong element types.
NESTED_BODIES: tuple[Any, ...] = (
    # top level
    {"artifacts": "x"},
    {"artifacts": []},
    {"artifacts": 3, "flow_runs": True, "task_runs": "y", "flows": 1.5, "deployments": []},
    {"sort": 1},
    {"sort": ["ID_DESC"]},
    {"sort": "KEY_ASC ", "offset": "1"},
    # second level
    {"artifacts": {"key": 3}},
    {"artifacts": {"key": []}},
    {"artifacts": {"type": "markdown"}},
    {"flow_runs": {"state": "COMPLETED"}},
    {"deployments": {"id": 3}},
    {"flows": {"deployment": []}},
    {"task_runs": {"flow_run_id": "x"}},
    # leaves
    {"artifacts": {"key": {"any_": "report"}}},
    {"artifacts": {"key": {"any_": [1, None, "ok", {"a": 1}]}}},
    {"artifacts": {"key": {"like_": 5}}},
    {"artifacts": {"key": {"like_": ["a"]}}},
    {"artifacts": {"key": {"exists_": "maybe"}}},
    {"artifacts": {"key": {"exists_": 2}}},
    {"artifacts": {"type": {"not_any_": "table"}}},
    {"flow_runs": {"tags": {"all_": "x"}}},
    {"flow_runs": {"tags": {"is_null_": "sometimes"}}},
    {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "bad"]}}}},
    {"flow_runs": {"state": {"type": {"any_": "RUNNING"}}}},
    {"flow_runs": {"state": {"name": {"any_": [1]}}}},
    {"flow_runs": {"deployment_id": {"is_null_": []}}},
    {"task_runs": {"flow_run_id": {"is_null_": "x"}}},
    {"task_runs": {"state": {"type": {"any_": ["completed"]}}}},
    {"flows": {"name": {"any_": [None]}}},
    {"deployments": {"paused": {"eq_": "perhaps"}}},
    # unknown keys at every depth
    {"artifacts": {"key": {"nope": 1}}},
    {"artifacts": {"latest_id": {"any_": []}}},
    {"flow_runs": {"nope": {}}},
    {"flow_runs": {"state": {"nope": {}}}},
    {"flow_runs": {"state": {"type": {"nope": 1}}}},
    {"task_runs": {"flow_run_id": {"nope": 1}}},
    {"flows": {"deployment": {"nope": 1}}},
    {"deployments": {"nope": 1, "id": {"nope": 2}}},
    # operators
    {"artifacts": {"operator": 1}},
    {"flow_runs": {"operator": "AND"}},
    {"flow_runs": {"tags": {"operator": "xor"}}},
    {"deployments": {"operator": None}},
    # UUIDs
    {"artifacts": {"id": {"any_": ["zz", "00000000-0000-0000-0000-00000000000g"]}}},
    {"artifacts": {"id": {"any_": [""]}}},
    {"artifacts": {"id": {"any_": [123]}}},
    {"artifacts": {"flow_run_id": {"any_": [UUID, "x"]}}},
    {"flow_runs": {"id": {"not_any_": ["nope"]}}},
    {"flows": {"id": {"any_": [UUID.upper()]}}},
    # timestamps
    {"flow_runs": {"start_time": {"before_": "garbage"}}},
    {"flow_runs": {"start_time": {"before_": 1e30}}},
    {"flow_runs": {"start_time": {"after_": True}}},
    {"flow_runs": {"start_time": {"after_": []}}},
    {"flow_runs": {"end_time": {"before_": "P1D"}}},
    {"flow_runs": {"expected_start_time": {"after_": "2024-W01-1"}}},
    {"flow_runs": {"expected_start_time": {"after_": "20240101T000000"}}},
    {"task_runs": {"start_time": {"before_": "2024-13-45"}}},
    # limit and offset
    {"limit": "x"},
    {"limit": []},
    {"limit": True},
    {"limit": "1"},
    {"limit": 1.0},
    {"limit": 201, "offset": -1},
    {"limit": -1, "artifacts": {"nope": 1}},
    {"limit": "x", "offset": -1, "sort": "BAD"},
    {"offset": "a"},
    {"offset": 1.5},
    {"offset": -1.0},
    {"offset": None, "limit": None, "sort": None},
    {"limit": 3, "offset": 2**40},
    # non-object bodies
    [],
    [{"limit": 1}],
    "x",
    "",
    1,
    0,
    True,
    False,
    None,
)

# (content, content type) sent as raw bytes
RAW_BODIES: tuple[tuple[bytes, str | None], ...] = (
    (b"", "application/json"),
    (b"", None),
    (b"  ", "application/json"),
    (b"{", "application/json"),
    (b"[1,", "application/json"),
    (b"nul", "application/json"),
    (b'{"limit": 1,}', "application/json"),
    (b"{'limit': 1}", "application/json"),
    (b"\xff\xfe", "application/json"),
    (b'{"sort": "\xc3\xa9x"}', "application/json"),
    (b'{"sort": "BAD"}', None),
    (b'{"sort": "BAD"}', "text/plain"),
    (b"{", "text/plain"),
    (b'{"sort": "BAD"}', "application/merge-patch+json"),
    (b'{"sort": "BAD"}', "application/json; charset=utf-8"),
    (b'\xef\xbb\xbf{"limit": "x"}', "application/json"),
    (b'{"offset": -1}{', "application/json"),
)


@pytest.fixture(scope="module")
async def both(
    postgres_dsn: str, elasticsearch_url: str
) -> AsyncIterator[tuple[PrefectOracle, httpx.AsyncClient, Dataset]]:
    dataset = generate_dataset(SEED, DatasetScale.tiny())
    es = AsyncElasticsearch(elasticsearch_url)
    names = IndexNames(f"err-{uuid.uuid4().hex[:8]}-")
    await ensure_indices(es, names)
    try:
        await load_through_indexer(es, names, dataset, SEED)
        app = create_app(
            QuerySettings(), ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix)
        )
        async with (
            PrefectOracle(postgres_dsn, dataset) as oracle,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://svc/api"
            ) as client,
        ):
            yield oracle, client, dataset
    finally:
        await drop_indices(es, names)
        await es.close()


def _decoded(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _normalized(path: str, body: Any) -> Any:
    """Lists are compared as sets: the tiny dataset fits one page, ties have no order."""
    if isinstance(body, list) and not path.endswith("/count"):
        return sorted((row for row in body if isinstance(row, dict)), key=lambda r: r["id"])
    return body


async def _compare(
    oracle: PrefectOracle,
    client: httpx.AsyncClient,
    path: str,
    content: bytes,
    content_type: str | None,
) -> str | None:
    headers = {} if content_type is None else {"content-type": content_type}
    want = await oracle.client.post(path, content=content, headers=headers)
    got = await client.post(path, content=content, headers=headers)
    if want.status_code != got.status_code:
        return f"status {got.status_code} != oracle {want.status_code}: {got.text[:300]}"
    want_body, got_body = _decoded(want), _decoded(got)
    if _normalized(path, want_body) != _normalized(path, got_body):
        return f"body {got.text[:600]} != oracle {want.text[:600]}"
    return None


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body).encode()


async def test_invalid_and_odd_bodies_get_prefects_answer(
    both: tuple[PrefectOracle, httpx.AsyncClient, Dataset],
) -> None:
    oracle, client, _ = both
    problems = []
    total = 0
    for path in ENDPOINTS:
        for body in (*INVALID_BODIES, *NESTED_BODIES):
            total += 1
            problem = await _compare(oracle, client, path, _json_bytes(body), "application/json")
            if problem:
                problems.append((path, body, problem))
        for content, content_type in RAW_BODIES:
            total += 1
            problem = await _compare(oracle, client, path, content, content_type)
            if problem:
                problems.append((path, content, problem))
    assert total == 4 * (len(INVALID_BODIES) + len(NESTED_BODIES) + len(RAW_BODIES))
    assert not problems, f"{len(problems)}/{total} differ; first: {problems[:3]}"


async def test_every_invalid_body_is_rejected_by_both(
    both: tuple[PrefectOracle, httpx.AsyncClient, Dataset],
) -> None:
    """The shared corpus really is invalid for the list endpoint (guards the test above)."""
    oracle, client, _ = both
    for body in INVALID_BODIES:
        want = await oracle.post("/artifacts/filter", body)
        got = await client.post("/artifacts/filter", json=body)
        assert want[0] == got.status_code == 422, body


async def test_get_errors_match(both: tuple[PrefectOracle, httpx.AsyncClient, Dataset]) -> None:
    oracle, client, dataset = both
    some_id = dataset.artifacts[0]["id"]
    paths = [
        f"/artifacts/{UUID}",
        f"/artifacts/{some_id.upper()}",
        "/artifacts/not-a-uuid",
        "/artifacts/no-such-key/latest",
        "/artifacts/a%25b_c/latest",
    ]
    for path in paths:
        want = await oracle.get(path)
        got = await client.get(path)
        assert want == (got.status_code, _decoded(got)), path

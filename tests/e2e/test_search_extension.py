"""The search extension (`POST /ext/v1/artifacts/search`) on a real Elasticsearch.

Six artifacts of two flows' runs, indexed by the real indexer (`LocalPipeline`), queried
through the real app (also Prefect's routes, against what the OpenAPI document says of
them). Every expected answer is derived here by hand from the artifacts'
text (or, for orders and counts, computed in Python from the rules docs/search.md states),
never from the service's code.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from elasticsearch import AsyncElasticsearch
from jsonschema import Draft202012Validator
from prometheus_client import REGISTRY

from indexer.local import LocalPipeline
from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings
from services.contract import encode_event
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames

PATH = "/ext/v1/artifacts/search"
JSON = "application/json"


def _id(n: int) -> str:
    return str(uuid.UUID(int=n * 0x1111, version=4))


F_ETL, F_TRAIN, R1, R2 = _id(1), _id(2), _id(3), _id(4)
A = {name: _id(10 + i) for i, name in enumerate(["a1", "a2", "a3", "a4", "a5", "a6", "a7"])}
TABLE = json.dumps([{"region": "emea", "accuracy": 0.93}, {"region": "apac", "accuracy": 0.88}])
ARTIFACTS: dict[str, dict[str, Any]] = {
    "a1": {
        "key": "sales-report",
        "type": "markdown",
        "description": "weekly numbers",
        "data": "# Quarterly sales\nRevenue grew in **EMEA**",
        "flow_run_id": R1,
        "created": "2024-01-01T00:00:00Z",
    },
    "a2": {
        "key": "sales-report",
        "type": "markdown",
        "data": "Revenue fell in APAC",
        "flow_run_id": R1,
        "created": "2024-02-01T00:00:00Z",
    },
    "a3": {
        "key": "model-metrics",
        "type": "table",
        "data": TABLE,
        "metadata_": {"owner": "ml-team", "threshold": "0.9", "run_at": "2024-03-01T10:00:00Z"},
        "flow_run_id": R2,
        "created": "2024-03-01T00:00:00Z",
    },
    "a4": {
        "type": "link",
        "data": "[dashboard](https://grafana.example/d/abc)",
        "flow_run_id": R2,
        "created": "2024-04-01T00:00:00Z",
    },
    "a5": {
        "key": "progress-x",
        "type": "progress",
        "data": 42.5,
        "created": "2024-05-01T00:00:00Z",
    },
    "a6": {
        "key": "notes",
        "type": "markdown",
        "description": "Other",
        "data": "this one mentions revenue too",
        "flow_run_id": R1,
        "created": "2024-06-01T00:00:00Z",
    },
}
LATE = {  # written between pages of the cursor test
    "key": "late",
    "type": "markdown",
    "data": "late revenue",
    "flow_run_id": R1,
    "created": "2024-04-15T00:00:00Z",
}
FLOW_OF = {"a1": "etl", "a2": "etl", "a6": "etl", "a3": "training", "a4": "training"}


def _records(items: dict[str, dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    out = []
    for name, fields in items.items():
        body = {"id": A[name], "updated": fields["created"], **fields}
        out.append(
            ("artifact", A[name].encode(), encode_event("artifact", A[name], "upsert", 1, body))
        )
    return out


def _parents() -> list[tuple[str, bytes, bytes]]:
    ts = "2024-01-01T00:00:00Z"
    items = [
        ("flow", F_ETL, {"name": "etl"}),
        ("flow", F_TRAIN, {"name": "training"}),
        (
            "flow_run",
            R1,
            {"name": "r1", "flow_id": F_ETL, "state_type": "COMPLETED", "tags": ["prod"]},
        ),
        (
            "flow_run",
            R2,
            {"name": "r2", "flow_id": F_TRAIN, "state_type": "FAILED", "tags": ["dev"]},
        ),
    ]
    return [
        (
            entity,
            i.encode(),
            encode_event(entity, i, "upsert", 1, {"id": i, "created": ts, "updated": ts, **body}),
        )
        for entity, i, body in items
    ]


@dataclass
class Stack:
    es: AsyncElasticsearch
    names: IndexNames
    pipeline: LocalPipeline
    client: httpx.AsyncClient


@pytest.fixture
async def stack(elasticsearch_url: str) -> AsyncIterator[Stack]:
    names = IndexNames(f"ext-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url, request_timeout=60)
    await ensure_indices(es, names)
    pipeline = LocalPipeline(es, names)
    await pipeline.load(_parents() + _records(ARTIFACTS), batch=100)
    await es.indices.refresh(index=",".join(names.all_aliases()))
    app = create_app(
        QuerySettings(), ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix)
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc", timeout=60
    )
    try:
        yield Stack(es, names, pipeline, client)
    finally:
        await client.aclose()
        await drop_indices(es, names)
        await es.close()


async def search(stack: Stack, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    resp = await stack.client.post(PATH, json=body)
    assert resp.status_code == status, resp.text[:500]
    result: dict[str, Any] = resp.json()
    return result


def names_of(result: dict[str, Any]) -> set[str]:
    by_id = {v: k for k, v in A.items()}
    return {by_id[h["artifact"]["id"]] for h in result["hits"]}


async def test_full_text_finds_words_of_every_kind_of_artifact(stack: Stack) -> None:
    cases = {
        "revenue": {"a1", "a2", "a6"},
        "REVENUE": {"a1", "a2", "a6"},
        "revenue emea": {"a1"},  # all words must match
        "revenue AND emea": {"a1"},
        "revenue NOT apac": {"a1", "a6"},
        "revenue -apac": {"a1", "a6"},
        "apac OR dashboard": {"a2", "a3", "a4"},
        '"revenue grew"': {"a1"},
        '"grew revenue"': set(),
        "data:emea": {"a1", "a3"},  # a markdown word, a table cell
        "accuracy": {"a3"},  # a table's column name
        "0.93": {"a3"},
        "metadata:owner": {"a3"},
        "metadata:team": {"a3"},
        "dashboard": {"a4"},  # a link's text
        '"grafana.example"': {"a4"},
        "42.5": {"a5"},  # a progress value
        "sales": {"a1", "a2"},  # key words and markdown words
        "key:sales": {"a1", "a2"},
        "description:weekly": {"a1"},
        "type:table": {"a3"},
        "state:FAILED": {"a3", "a4"},
        "tags:prod AND revenue": {"a1", "a2", "a6"},
        "flow:training": {"a3", "a4"},
        "rev*": {"a1", "a2", "a6"},
        "_exists_:metadata": {"a3"},
        "nothing-matches-this": set(),
    }
    for q, want in cases.items():
        assert names_of(await search(stack, {"q": q, "limit": 50})) == want, q


async def test_typed_conditions_on_metadata_and_table_values(stack: Stack) -> None:
    def where(*conditions: dict[str, Any]) -> dict[str, Any]:
        return {"where": list(conditions), "limit": 50}

    cases: list[tuple[dict[str, Any], set[str]]] = [
        (where({"field": "data.accuracy", "op": "gte", "value": 0.9}), {"a3"}),  # a cell
        (where({"field": "data.accuracy", "op": "gt", "value": 0.95}), set()),
        (where({"field": "data.accuracy", "op": "lt", "value": 0.9}), {"a3"}),  # the other row
        (where({"field": "data.region", "op": "eq", "value": "apac"}), {"a3"}),
        (where({"field": "data.region", "op": "eq", "value": "APAC"}), set()),  # exact
        (where({"field": "data.region", "op": "in", "value": ["mars", "emea"]}), {"a3"}),
        (where({"field": "metadata.owner", "op": "eq", "value": "ml-team"}), {"a3"}),
        (where({"field": "metadata.threshold", "op": "gte", "value": 0.9}), {"a3"}),  # "0.9"
        (where({"field": "metadata.threshold", "op": "gt", "value": 0.9}), set()),
        (where({"field": "metadata.run_at", "op": "lt", "value": "2024-03-01T10:00:01Z"}), {"a3"}),
        (where({"field": "metadata.run_at", "op": "gt", "value": "2024-03-01T10:00:00Z"}), set()),
        (where({"field": "data", "op": "gte", "value": 40}), {"a5"}),  # a progress value
        (where({"field": "data", "op": "lt", "value": 42.5}), set()),
        (where({"field": "metadata.owner", "op": "exists"}), {"a3"}),
        (where({"field": "data.region", "op": "exists"}), {"a3"}),
        (where({"field": "data.nothing", "op": "exists"}), set()),
        (  # with words and a Prefect filter
            {
                "q": "apac",
                "prefect_filter": {"flow_runs": {"id": {"any_": [R2]}}},
                **where({"field": "data.accuracy", "op": "gte", "value": 0.5}),
            },
            {"a3"},
        ),
    ]
    for body, want in cases:
        assert names_of(await search(stack, body)) == want, body
    bad = await stack.client.post(
        PATH, json=where({"field": "data.region", "op": "gt", "value": "emea"})
    )
    assert bad.status_code == 422 and "numbers or timestamps" in bad.json()["detail"]
    latest = await search(
        stack,
        {"latest_per_key": True, **where({"field": "metadata.owner", "op": "exists"})},
    )
    assert [h["artifact"]["key"] for h in latest["hits"]] == ["model-metrics"]


async def test_conditions_in_the_query_string_match_what_where_matches(stack: Stack) -> None:
    cases: list[tuple[str, list[dict[str, Any]], set[str]]] = [
        ("data.accuracy >= 0.9", [{"field": "data.accuracy", "op": "gte", "value": 0.9}], {"a3"}),
        ("data.accuracy > 0.95", [{"field": "data.accuracy", "op": "gt", "value": 0.95}], set()),
        ("data.accuracy < 0.9", [{"field": "data.accuracy", "op": "lt", "value": 0.9}], {"a3"}),
        ("data.region:apac", [{"field": "data.region", "op": "eq", "value": "apac"}], {"a3"}),
        ("data.region:APAC", [{"field": "data.region", "op": "eq", "value": "APAC"}], set()),
        (
            "metadata.threshold:>=0.9",
            [{"field": "metadata.threshold", "op": "gte", "value": 0.9}],
            {"a3"},
        ),
        (
            "metadata.threshold <= 0.8",
            [{"field": "metadata.threshold", "op": "lte", "value": 0.8}],
            set(),
        ),
        (
            "metadata.run_at >= 2024-03-01",
            [{"field": "metadata.run_at", "op": "gte", "value": "2024-03-01"}],
            {"a3"},
        ),
        (
            "metadata.run_at > 2024-03-01T10:00:00Z",
            [{"field": "metadata.run_at", "op": "gt", "value": "2024-03-01T10:00:00Z"}],
            set(),
        ),
        ("data >= 40", [{"field": "data", "op": "gte", "value": 40}], {"a5"}),
        (
            "data:[40 TO 42.5}",
            [
                {"field": "data", "op": "gte", "value": 40},
                {"field": "data", "op": "lt", "value": 42.5},
            ],
            set(),
        ),
        (
            "data:[40 TO 42.5]",
            [
                {"field": "data", "op": "gte", "value": 40},
                {"field": "data", "op": "lte", "value": 42.5},
            ],
            {"a5"},
        ),
        ("_exists_:metadata.owner", [{"field": "metadata.owner", "op": "exists"}], {"a3"}),
        (
            "data.region:(mars OR emea)",
            [{"field": "data.region", "op": "in", "value": ["mars", "emea"]}],
            {"a3"},
        ),
        ("_exists_:data.nothing", [{"field": "data.nothing", "op": "exists"}], set()),
    ]
    everything = names_of(await search(stack, {"limit": 50}))
    for q, where, want in cases:
        by_q = names_of(await search(stack, {"q": q, "limit": 50}))
        by_where = names_of(await search(stack, {"where": where, "limit": 50}))
        assert by_q == by_where == want, (q, by_q, by_where)
        negated = names_of(await search(stack, {"q": f"NOT ({q})", "limit": 50}))
        assert negated == everything - want, q
    # the example, with words and groups
    for q, want in (
        ("metadata.threshold >= 0.9 AND data.region:emea", {"a3"}),
        ("(data >= 40 OR metadata.owner:ml-team) AND NOT type:progress", {"a3"}),
        ("revenue OR data.accuracy >= 0.9", {"a1", "a2", "a3", "a6"}),
        ("revenue AND data.accuracy >= 0.9", set()),
    ):
        assert names_of(await search(stack, {"q": q, "limit": 50})) == want, q
    for q, says in (
        ("metadata.threshold >= ", "a value is missing"),
        ("metadata.threshold >= abc", "compares numbers or timestamps, not 'abc'"),
        ("foo.bar >= 1", "Unknown field 'foo.bar'"),
        ("metadata.x:[1 TO", "a range is written [low TO high]"),
    ):
        resp = await stack.client.post(PATH, json={"q": q})
        assert resp.status_code == 422, (q, resp.text)
        assert says in resp.json()["detail"], (q, resp.text)


async def test_relevance_and_highlights(stack: Stack) -> None:
    result = await search(stack, {"q": "emea", "limit": 50})
    scores = [h["score"] for h in result["hits"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    by_name = {names_of({"hits": [h]}).pop(): h for h in result["hits"]}
    assert any("<mark>EMEA</mark>" in s for s in by_name["a1"]["highlight"]["data"])
    assert any("<mark>emea</mark>" in s for s in by_name["a3"]["highlight"]["data"])
    plain = await search(stack, {"q": "emea", "highlight": False})
    assert all(h["highlight"] is None for h in plain["hits"])
    # a score where the order uses relevance (first or not), none under another order
    newest = [{"field": "created", "order": "desc"}]
    mixed = await search(stack, {"q": "emea", "sort": [*newest, {"field": "relevance"}]})
    assert mixed["hits"] and all(h["score"] > 0 for h in mixed["hits"])
    by_date = await search(stack, {"q": "emea", "sort": newest, "limit": 50})
    assert names_of(by_date) == names_of(result)
    assert all(h["score"] is None for h in by_date["hits"])


async def test_a_search_is_a_subset_of_the_prefect_filter(stack: Stack) -> None:
    filters = [
        {},
        {"flow_runs": {"id": {"any_": [R1]}}},
        {"flow_runs": {"id": {"any_": [R2]}}},
        {"artifacts": {"type": {"any_": ["markdown"]}}},
        {"flows": {"name": {"any_": ["training"]}}},
        {"artifacts": {"key": {"exists_": False}}},
    ]
    for flt in filters:
        resp = await stack.client.post("/api/artifacts/filter", json=flt)
        assert resp.status_code == 200
        prefect = {row["id"] for row in resp.json()}
        for q in ("revenue", "emea OR dashboard", "data:emea", "", "42.5"):
            got = await search(stack, {"q": q, "prefect_filter": flt, "limit": 50})
            ids = {h["artifact"]["id"] for h in got["hits"]}
            assert ids <= prefect, (flt, q)
            if not q:
                assert ids == prefect, flt  # no query: exactly Prefect's answer
    hits = await search(
        stack, {"q": "revenue", "prefect_filter": {"flow_runs": {"id": {"any_": [R2]}}}}
    )
    assert hits["hits"] == []


async def test_ranges_orders_fields_and_totals(stack: Stack) -> None:
    ranged = await search(
        stack,
        {
            "created": {"after": "2024-02-01T00:00:00Z", "before": "2024-06-01T00:00:00Z"},
            "limit": 50,
        },
    )
    assert names_of(ranged) == {"a2", "a3", "a4", "a5"}
    updated = await search(stack, {"updated": {"before": "2024-02-01T00:00:00.000001Z"}})
    assert names_of(updated) == {"a1", "a2"}

    def order(result: dict[str, Any]) -> list[str]:
        by_id = {v: k for k, v in A.items()}
        return [by_id[h["artifact"]["id"]] for h in result["hits"]]

    def id_desc(name: str) -> int:
        return -uuid.UUID(A[name]).int

    every = list(ARTIFACTS)
    newest_first = sorted(every, key=lambda n: ARTIFACTS[n]["created"], reverse=True)
    assert order(await search(stack, {"limit": 50})) == newest_first
    keyed = sorted(
        (n for n in every if "key" in ARTIFACTS[n]), key=lambda n: (ARTIFACTS[n]["key"], id_desc(n))
    )
    key_asc = await search(stack, {"sort": [{"field": "key", "order": "asc"}], "limit": 50})
    assert order(key_asc) == [*keyed, "a4"]  # no key: last when ascending
    flows = sorted(FLOW_OF, key=lambda n: (FLOW_OF[n], id_desc(n)))
    by_flow = await search(stack, {"sort": [{"field": "flow_name", "order": "asc"}], "limit": 50})
    assert order(by_flow) == [*flows, "a5"]
    by_type = await search(
        stack,
        {
            "sort": [{"field": "type", "order": "asc"}, {"field": "created", "order": "desc"}],
            "limit": 50,
        },
    )
    assert order(by_type) == sorted(
        every, key=lambda n: (ARTIFACTS[n]["type"], newest_first.index(n))
    )

    slim = await search(
        stack, {"q": "revenue", "fields": ["id", "key"], "track_total": True, "limit": 1}
    )
    assert slim["total"] == 3 and len(slim["hits"]) == 1
    assert set(slim["hits"][0]["artifact"]) == {"id", "key"}
    assert (await search(stack, {"q": "revenue"}))["total"] is None


EDGES = {  # created at the edges of months and years, leap days included
    "e1": "2020-02-29T12:00:00Z",
    "e2": "2023-12-31T23:59:59.999999Z",
    "e3": "2024-01-31T23:59:59.999999Z",
    "e4": "2024-02-01T00:00:00Z",
    "e5": "2024-02-29T23:59:59.999999Z",
    "e6": "2024-03-01T00:00:00Z",
    "e7": "2024-12-31T23:59:59.999999Z",
    "e8": "2025-01-01T00:00:00Z",
}


async def test_month_and_year_histograms_follow_the_calendar(stack: Stack) -> None:
    records = []
    for n, (name, created) in enumerate(EDGES.items()):
        i = _id(100 + n)
        body = {"id": i, "key": f"edge-{name}", "type": "markdown", "data": "edge"}
        body |= {"created": created, "updated": created}
        records.append(("artifact", i.encode(), encode_event("artifact", i, "upsert", 1, body)))
    await stack.pipeline.load(records, batch=100)
    await stack.es.indices.refresh(index=",".join(stack.names.all_aliases()))
    only_edges = {"prefect_filter": {"artifacts": {"key": {"like_": "edge-%"}}}}

    async def histogram(width: str, **more: Any) -> list[tuple[str, int]]:
        body = {**only_edges, "facets": ["created"], "histogram": width, "limit": 0, **more}
        return [(b["value"], b["count"]) for b in (await search(stack, body))["facets"]["created"]]

    assert await histogram("month") == [
        ("2020-02-01T00:00:00Z", 1),
        ("2023-12-01T00:00:00Z", 1),
        ("2024-01-01T00:00:00Z", 1),
        ("2024-02-01T00:00:00Z", 2),  # the 1st and the leap day's last microsecond
        ("2024-03-01T00:00:00Z", 1),
        ("2024-12-01T00:00:00Z", 1),
        ("2025-01-01T00:00:00Z", 1),
    ]
    assert await histogram("year") == [
        ("2020-01-01T00:00:00Z", 1),
        ("2023-01-01T00:00:00Z", 1),
        ("2024-01-01T00:00:00Z", 5),
        ("2025-01-01T00:00:00Z", 1),
    ]
    assert await histogram("day", created={"after": "2024-02-29T00:00:00Z"}) == [
        ("2024-02-29T00:00:00Z", 1),
        ("2024-03-01T00:00:00Z", 1),
        ("2024-12-31T00:00:00Z", 1),
        ("2025-01-01T00:00:00Z", 1),
    ]
    # a month histogram over everything (the six artifacts of the stack too)
    everything = await search(stack, {"facets": ["created"], "histogram": "month", "limit": 0})
    assert sum(b["count"] for b in everything["facets"]["created"]) == len(ARTIFACTS) + len(EDGES)


async def test_absurd_ranges_and_histograms_are_refused(stack: Stack) -> None:
    backwards = {"after": "2024-02-01T00:00:00Z", "before": "2024-01-01T00:00:00Z"}
    for field in ("created", "updated"):
        resp = await stack.client.post(PATH, json={field: backwards})
        assert resp.status_code == 422, resp.text
        assert "is later than before" in resp.json()["detail"][0]["msg"]
    year = {"after": "2020-01-01T00:00:00Z", "before": "2021-01-01T00:00:00Z"}
    resp = await stack.client.post(
        PATH, json={"facets": ["created"], "histogram": "hour", "created": year}
    )
    assert resp.status_code == 422, resp.text
    assert "8,784 hour buckets (at most 2,000)" in resp.json()["detail"]
    ok = await search(stack, {"facets": ["created"], "histogram": "day", "created": year})
    assert ok["facets"]["created"] == []
    for body in ({"facets": ["type"], "facet_size": 101}, {"histogram": "minute"}):
        resp = await stack.client.post(PATH, json=body)
        assert resp.status_code == 422, body


async def test_multi_select_facets(stack: Stack) -> None:
    facets = ["type", "flow", "flow_run_state", "tags", "key", "created"]

    def counts(result: dict[str, Any], name: str) -> dict[str, int]:
        return {b["value"]: b["count"] for b in result["facets"][name]}

    everything = await search(stack, {"facets": facets, "limit": 0})
    assert everything["hits"] == []
    assert counts(everything, "type") == {"markdown": 3, "table": 1, "link": 1, "progress": 1}
    assert counts(everything, "flow") == {"etl": 3, "training": 2}
    assert counts(everything, "flow_run_state") == {"COMPLETED": 3, "FAILED": 2}
    assert counts(everything, "tags") == {"prod": 3, "dev": 2}
    assert counts(everything, "key") == {
        "sales-report": 2,
        "model-metrics": 1,
        "progress-x": 1,
        "notes": 1,
    }
    assert counts(everything, "created") == {ARTIFACTS[n]["created"]: 1 for n in ARTIFACTS}

    picked = await search(
        stack, {"facets": facets, "selected": {"type": ["markdown", "link"]}, "limit": 50}
    )
    assert names_of(picked) == {"a1", "a2", "a4", "a6"}
    # a facet ignores its own selection, and counts under the others'
    assert counts(picked, "type") == counts(everything, "type")
    assert counts(picked, "flow") == {"etl": 3, "training": 1}
    both = await search(
        stack, {"facets": facets, "selected": {"type": ["markdown", "link"], "flow": ["training"]}}
    )
    assert names_of(both) == {"a4"}
    assert counts(both, "type") == {"table": 1, "link": 1}
    assert counts(both, "flow") == {"etl": 3, "training": 1}
    with_text = await search(stack, {"q": "revenue", "facets": ["key"]})
    assert counts(with_text, "key") == {"sales-report": 2, "notes": 1}


async def test_latest_per_key(stack: Stack) -> None:
    latest = await search(stack, {"q": "revenue", "latest_per_key": True})
    rows = [h["artifact"] for h in latest["hits"]]
    assert {(r["key"], r["latest_id"]) for r in rows} == {
        ("sales-report", A["a2"]),
        ("notes", A["a6"]),
    }
    assert (await search(stack, {"q": "grew", "latest_per_key": True}))[
        "hits"
    ] == []  # a1 is not latest
    scoped = await search(
        stack,
        {"latest_per_key": True, "prefect_latest_filter": {"flow_runs": {"id": {"any_": [R2]}}}},
    )
    assert [h["artifact"]["key"] for h in scoped["hits"]] == ["model-metrics"]


async def test_cursors_walk_a_snapshot(stack: Stack) -> None:
    body: dict[str, Any] = {"sort": [{"field": "created", "order": "asc"}], "limit": 2}
    seen: list[list[str]] = []
    page = await search(stack, body)
    seen.append(sorted(names_of(page)))
    page = await search(stack, {**body, "cursor": page["next_cursor"]})  # opens the snapshot
    seen.append(sorted(names_of(page)))
    cursor = page["next_cursor"]
    # a write after the snapshot: created between a4 and a5, so it would be on the next page
    await stack.pipeline.load(_records({"a7": LATE}), batch=10)
    await stack.es.indices.refresh(index=stack.names.artifacts)
    page = await search(stack, {**body, "cursor": cursor})
    seen.append(sorted(names_of(page)))
    assert seen == [["a1", "a2"], ["a3", "a4"], ["a5", "a6"]]
    last = await search(stack, {**body, "cursor": page["next_cursor"]})
    assert last["hits"] == [] and last["next_cursor"] is None
    fresh = [h["artifact"]["id"] for h in (await search(stack, {**body, "limit": 50}))["hits"]]
    assert A["a7"] in fresh and len(fresh) == 7  # a new search sees the write

    # a cursor used with another body, a forged one, an expired one
    resp = await stack.client.post(PATH, json={**body, "limit": 3, "cursor": cursor})
    assert resp.status_code == 422 and "another search" in resp.json()["detail"]
    resp = await stack.client.post(PATH, json={**body, "cursor": "bm90IGEgY3Vyc29y"})
    assert resp.status_code == 422
    raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    # the last page closed the snapshot already; closing it again (404) changes nothing
    await stack.es.options(ignore_status=404).close_point_in_time(id=raw["p"])
    resp = await stack.client.post(PATH, json={**body, "cursor": cursor})
    assert resp.status_code == 410, resp.text
    assert "start the search again" in resp.json()["detail"]


# relevance cursor pages from windows (query/windows.py): 13 artifacts that match `revenue`
# in four ways (ties among each), besides a1, a2 and a6
WINDOWED = {
    f"w{i}": {
        "key": f"w-{i}",
        "type": "markdown",
        "data": " ".join(["revenue"] * (1 + i % 4) + ["week", "over", "week"]),
        "flow_run_id": R1,
        "created": f"2024-07-{1 + i:02d}T00:00:00Z",
    }
    for i in range(13)
}
A.update({name: _id(100 + i) for i, name in enumerate(WINDOWED)})
A["late"] = _id(200)


def _windowed_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("query_search_windowed_pages_total", {"outcome": outcome})
    return value or 0.0


def _ranked_ahead(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "query_search_windows_ranked_ahead_total", {"outcome": outcome}
    )
    return value or 0.0


async def _walk(
    clients: list[httpx.AsyncClient], body: dict[str, Any], between: Any = None
) -> list[dict[str, Any]]:
    """Every hit of a cursor walk; page n is asked of `clients[min(n, len - 1)]`;
    `between(n)` runs after page n."""
    hits: list[dict[str, Any]] = []
    cursor = None
    for n in range(100):
        client = clients[min(n, len(clients) - 1)]
        resp = await client.post(PATH, json={**body, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text[:500]
        page = resp.json()
        hits += page["hits"]
        cursor = page["next_cursor"]
        if cursor is None:
            return hits
        if between is not None:
            await between(n)
    raise AssertionError("the walk did not end")


async def test_relevance_cursor_pages_from_windows_are_the_ranking(
    stack: Stack, elasticsearch_url: str
) -> None:
    """Relevance pages answered from a window ranked by an earlier page (and a window
    missing: another replica, or windows turned off) are exactly the hits, scores and
    highlights of one search ranking every match, and stay in the walk's snapshot. With
    fewer matches than the threshold, a walk is searched without windows."""
    await stack.pipeline.load(_records(WINDOWED), batch=100)
    await stack.es.indices.refresh(index=stack.names.artifacts)
    settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=stack.names.prefix)

    def client(query: QuerySettings) -> httpx.AsyncClient:
        app = create_app(query, settings)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc", timeout=60
        )

    # 16 match; windows of 3 pages of 2, so the 8-page walk ranks more than one window;
    # the next window is ranked from the page that leaves one page of the current one
    windowed = client(
        QuerySettings(
            relevance_window_min_matches=16,
            relevance_window_pages=3,
            relevance_rank_ahead_pages=1,
            pages_ahead=0,  # when rankings start, page by page (pages fetched ahead: below)
        )
    )
    unwindowed = client(QuerySettings(relevance_window_pages=1))
    body: dict[str, Any] = {"q": "revenue", "limit": 2}
    try:
        # the default threshold (20,000 matches): the first cursor page ranks, finds the
        # walk small, and the walk goes on without windows
        before = {o: _windowed_count(o) for o in ("ranked", "small", "remembered")}
        assert len(await _walk([stack.client], body)) == 16
        assert {o: _windowed_count(o) - n for o, n in before.items()} == {
            "ranked": 0,
            "small": 1,
            "remembered": 0,
        }

        everything = await search(stack, {**body, "limit": 50})
        ranking = everything["hits"]
        assert len(ranking) == 16 and everything["next_cursor"] is None
        assert len({h["score"] for h in ranking}) >= 4  # ties and distinct scores
        remembered, ranked = _windowed_count("remembered"), _windowed_count("ranked")
        ahead = _ranked_ahead("started")

        started: list[float] = []

        async def write_late(n: int) -> None:  # after page 2: a better match than any
            started.append(_ranked_ahead("started") - ahead)
            if n == 1:
                late = {**LATE, "data": "revenue revenue revenue revenue revenue"}
                await stack.pipeline.load(_records({"late": late}), batch=10)
                await stack.es.indices.refresh(index=stack.names.artifacts)

        walked = await _walk([windowed], body, write_late)
        assert walked == ranking  # the snapshot of page 2, in the ranking's order
        assert _windowed_count("remembered") - remembered >= 4  # pages 3.. from windows
        # a window ran out: the next one ranked (in the background, or by its first page)
        assert _windowed_count("ranked") - ranked + _ranked_ahead("started") - ahead >= 2
        # page 2 ranked hits 3-8 (pages 2-4); page 3, leaving one page of it, started
        # ranking hits 9-14 before page 4 was asked; page 6 started hits 15-16 (the last)
        assert started[:4] == [0, 0, 1, 1] and started[-1] == 2, started
        assert _windowed_count("refused") == 0

        after = (await search(stack, {**body, "limit": 50}))["hits"]
        assert len(after) == 17 and after[0]["artifact"]["id"] == A["late"]
        assert await _walk([unwindowed], body) == after  # every page ranked
        # pages 1-3 here, then another replica without this one's windows
        assert await _walk([windowed, windowed, windowed, unwindowed], body) == after
        # and the other way round
        assert await _walk([unwindowed, unwindowed, windowed], body) == after
        assert _windowed_count("refused") == 0
    finally:
        await windowed.aclose()
        await unwindowed.aclose()


def _pages_ahead(outcome: str) -> float:
    value = REGISTRY.get_sample_value("query_search_pages_ahead_total", {"outcome": outcome})
    return value or 0.0


async def test_cursor_pages_fetched_ahead_are_the_pages_asked(
    stack: Stack, elasticsearch_url: str
) -> None:
    """Once a cursor page is answered, the service fetches the next one in the background
    and answers it from that fetch. Walks in relevance order (pages from windows) and in
    `created` order (`search_after`) are, page for page, the walks of a service that
    fetches nothing ahead — hits, scores, highlights — also when a better match is written
    after a page whose successor was already fetched: the walk stays in its snapshot."""
    await stack.pipeline.load(_records(WINDOWED), batch=100)
    await stack.es.indices.refresh(index=stack.names.artifacts)
    settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=stack.names.prefix)

    def client(pages_ahead: int) -> httpx.AsyncClient:
        query = QuerySettings(
            relevance_window_min_matches=1, relevance_window_pages=3, pages_ahead=pages_ahead
        )
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(query, settings)),
            base_url="http://svc",
            timeout=60,
        )

    ahead, plain = client(8), client(0)
    relevance: dict[str, Any] = {"q": "revenue", "limit": 2}
    created: dict[str, Any] = {**relevance, "sort": [{"field": "created", "order": "asc"}]}
    try:
        before = await _walk([plain], relevance)
        assert len(before) == 16
        pages: list[int] = []

        async def write_late(n: int) -> None:
            pages.append(n)
            if n == 2:  # page 3 answered, page 4 fetched or being fetched: a better match
                late = {**LATE, "data": "revenue revenue revenue revenue revenue"}
                await stack.pipeline.load(_records({"late": late}), batch=10)
                await stack.es.indices.refresh(index=stack.names.artifacts)

        taken = _pages_ahead("taken")
        assert await _walk([ahead], relevance, write_late) == before  # its snapshot
        # pages 1 and 2 are asked (the first cursor page opens the point in time); each
        # later page was taken from the fetch its predecessor started
        assert _pages_ahead("taken") - taken == len(pages) + 1 - 2
        after = await _walk([plain], relevance)
        assert len(after) == 17 and after[0]["artifact"]["id"] == A["late"]
        for body in (relevance, created):
            taken = _pages_ahead("taken")
            assert await _walk([ahead], body) == await _walk([plain], body)
            assert _pages_ahead("taken") - taken == 7  # 17 hits: 9 pages, 7 fetched ahead
        # a walk continued by another replica (no fetch of its own) is the same walk
        assert await _walk([ahead, ahead, ahead, plain, ahead], relevance) == after
    finally:
        await ahead.aclose()
        await plain.aclose()


async def test_bad_queries_get_clear_errors(stack: Stack) -> None:
    for q, says in (
        ("live:false", "Searchable fields"),
        ("https://grafana.example", "quote a value"),
        ('"unclosed', "unclosed quote"),
        ("revenue AND (", "could not be run"),
    ):
        resp = await stack.client.post(PATH, json={"q": q})
        assert resp.status_code == 422, (q, resp.text)
        assert says in resp.json()["detail"], (q, resp.text)
    for body in (
        {"limit": 1000},
        {"sort": [{"field": "nope"}]},
        {"prefect_filter": {"artifacts": {"x": 1}}},
    ):
        resp = await stack.client.post(PATH, json=body)
        assert resp.status_code == 422, body
        assert resp.json()["detail"][0]["loc"][0] == "body"


async def test_the_openapi_document_describes_the_search(stack: Stack) -> None:
    doc = (await stack.client.get("/openapi.json")).json()
    op = doc["paths"][PATH]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/SearchRequest"
    )
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/SearchResponse")
    assert {"410", "422", "503"} <= set(op["responses"])
    props = doc["components"]["schemas"]["SearchRequest"]["properties"]
    assert "metadata.accuracy >= 0.9" in props["q"]["description"]
    widths = props["histogram"]["enum"]
    assert {"month", "year"} <= set(widths)
    assert {"q", "prefect_filter", "cursor", "facets", "selected", "latest_per_key"} <= set(props)
    assert not any(path.startswith("/api/ext") for path in doc["paths"])


# -- Prefect's routes, as the OpenAPI document describes them (query/openapi.py) -----------
def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in `doc`."""
    return Draft202012Validator(
        {"components": doc["components"], **schema},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _answer_schema(doc: dict[str, Any], method: str, path: str, status: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["responses"][status]["content"][JSON][
        "schema"
    ]
    return schema


def _body_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    body = doc["paths"][path]["post"]["requestBody"]
    assert body["required"] is False  # Prefect answers an empty body
    schema: dict[str, Any] = body["content"][JSON]["schema"]
    return schema


async def test_prefect_routes_answer_what_the_openapi_document_describes(stack: Stack) -> None:
    doc = (await stack.client.get("/openapi.json")).json()
    filtered = {"limit": 3, "sort": "KEY_ASC", "artifacts": {"type": {"any_": ["markdown"]}}}
    answers: dict[str, Any] = {}
    for path, body in (
        ("/api/artifacts/filter", {}),
        ("/api/artifacts/filter", filtered),
        ("/api/artifacts/count", {"flow_runs": {"id": {"any_": [R1]}}}),
        ("/api/artifacts/latest/filter", {"sort": "KEY_DESC"}),
        ("/api/artifacts/latest/count", {}),
    ):
        _validator(doc, _body_schema(doc, path)).validate(body)  # documented as valid
        resp = await stack.client.post(path, json=body)
        assert resp.status_code == 200, resp.text[:300]
        _validator(doc, _answer_schema(doc, "post", path, "200")).validate(resp.json())
        answers.setdefault(path, resp.json())
    rows = answers["/api/artifacts/filter"]
    assert len(rows) == len(ARTIFACTS)  # every artifact's shape was checked
    assert {row["type"] for row in rows} >= {"markdown", "table"}
    assert isinstance(answers["/api/artifacts/count"], int)
    assert answers["/api/artifacts/latest/filter"][0]["latest_id"] in {r["id"] for r in rows}

    one = _validator(doc, _answer_schema(doc, "get", "/api/artifacts/{artifact_id}", "200"))
    for row in rows:
        got = await stack.client.get(f"/api/artifacts/{row['id']}")
        assert got.status_code == 200
        one.validate(got.json())
    latest = await stack.client.get("/api/artifacts/sales-report/latest")
    _validator(doc, _answer_schema(doc, "get", "/api/artifacts/{key}/latest", "200")).validate(
        latest.json()
    )
    missing = await stack.client.get(f"/api/artifacts/{_id(999)}")
    assert missing.status_code == 404
    _validator(doc, _answer_schema(doc, "get", "/api/artifacts/{artifact_id}", "404")).validate(
        missing.json()
    )

    # what the document refuses, the service refuses, with the documented error bodies
    refused = _validator(doc, _answer_schema(doc, "post", "/api/artifacts/filter", "422"))
    for bad in ({"limit": 201}, {"limit": -1}, {"sort": "NEWEST"}, {"artifacts": {"bogus": 1}}):
        assert not _validator(doc, _body_schema(doc, "/api/artifacts/filter")).is_valid(bad)
        resp = await stack.client.post("/api/artifacts/filter", json=bad)
        assert resp.status_code == 422, bad
        refused.validate(resp.json())

    # and the answer schemas are strict enough to catch a wrong answer
    wrong = [{**rows[0], "id": "not-a-uuid"}, {k: v for k, v in rows[0].items() if k != "id"}]
    for answer in wrong:
        assert not _validator(
            doc, _answer_schema(doc, "post", "/api/artifacts/filter", "200")
        ).is_valid([answer])

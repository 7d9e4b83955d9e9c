"""Sort clauses, paging plans and the assembled request bodies."""

from __future__ import annotations

import pytest

from query.paging import EmptyPlan, FromSizePlan, SearchAfterPlan, plan_paging
from query.search import (
    ARTIFACT_SOURCE_FIELDS,
    COLLECTION_SOURCE_FIELDS,
    build_count_body,
    build_search_body,
)
from query.sort import sort_clauses
from services.prefect.sorting import ArtifactCollectionSort, ArtifactSort

TIE = {"id": {"order": "desc"}}


@pytest.mark.parametrize("collection", [False, True])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CREATED_DESC", [{"created_us": {"order": "desc"}}, TIE]),
        ("UPDATED_DESC", [{"updated_us": {"order": "desc"}}, TIE]),
        ("ID_DESC", [{"id": {"order": "desc"}}]),
        ("KEY_DESC", [{"key": {"order": "desc", "missing": "_first"}}, TIE]),
        ("KEY_ASC", [{"key": {"order": "asc", "missing": "_last"}}, TIE]),
    ],
)
def test_sort_clauses(name: str, expected: list[dict[str, object]], collection: bool) -> None:
    sort = ArtifactCollectionSort(name) if collection else ArtifactSort(name)
    assert sort_clauses(sort, collection) == expected


def test_sort_clauses_are_fresh_copies() -> None:
    first = sort_clauses(ArtifactSort.KEY_ASC, False)
    first[0]["key"]["order"] = "desc"
    first.append({"x": {}})
    assert sort_clauses(ArtifactSort.KEY_ASC, False) == [
        {"key": {"order": "asc", "missing": "_last"}},
        TIE,
    ]


def test_paging_plans() -> None:
    assert plan_paging(0, 200) == FromSizePlan(from_=0, size=200)
    assert plan_paging(9800, 200) == FromSizePlan(from_=9800, size=200)
    assert plan_paging(9801, 200) == SearchAfterPlan(skip=9801, take=200, page_size=10_000)
    assert plan_paging(5, 0) == EmptyPlan()
    assert plan_paging(10**6, 0) == EmptyPlan()
    assert plan_paging(50, 10, max_result_window=55) == SearchAfterPlan(
        skip=50, take=10, page_size=55
    )
    with pytest.raises(ValueError):
        plan_paging(-1, 1)
    with pytest.raises(ValueError):
        plan_paging(0, 1, max_result_window=0)


def test_search_after_page_sizes() -> None:
    plan = SearchAfterPlan(skip=25_001, take=200, page_size=10_000)
    sizes = list(plan.page_sizes())
    assert sizes == [10_000, 10_000, 5_201]
    assert sum(sizes) == plan.skip + plan.take


def test_search_body() -> None:
    query = {"bool": {"filter": []}}
    sort = sort_clauses(ArtifactSort.CREATED_DESC, False)
    body = build_search_body(query, sort, collection=False, size=10, from_=20)
    assert body == {
        "query": query,
        "sort": sort,
        "size": 10,
        "from": 20,
        "track_total_hits": False,
        "_source": {"includes": list(ARTIFACT_SOURCE_FIELDS)},
    }
    walk = build_search_body(
        query, sort, collection=True, size=5, search_after=[1, "x"], with_source=False
    )
    assert walk["search_after"] == [1, "x"] and walk["_source"] is False and "from" not in walk
    assert walk["stored_fields"] == "_none_"
    coll = build_search_body(query, sort, collection=True, size=1)
    assert coll["_source"] == {"includes": list(COLLECTION_SOURCE_FIELDS)}
    assert "latest_id" in COLLECTION_SOURCE_FIELDS and "latest_id" not in ARTIFACT_SOURCE_FIELDS
    with pytest.raises(ValueError):
        build_search_body(query, sort, collection=False, size=1, from_=0, search_after=[1])


def test_count_body() -> None:
    assert build_count_body({"match_all": {}}) == {"query": {"match_all": {}}}

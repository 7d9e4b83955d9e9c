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

ID = [{"id_hi": {"order": "desc"}}, {"id_lo": {"order": "desc"}}]


@pytest.mark.parametrize("collection", [False, True])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CREATED_DESC", [{"created_us": {"order": "desc"}}, *ID]),
        ("UPDATED_DESC", [{"updated_us": {"order": "desc"}}, *ID]),
        ("ID_DESC", ID),
        ("KEY_DESC", [{"key": {"order": "desc", "missing": "_first"}}, *ID]),
        ("KEY_ASC", [{"key": {"order": "asc", "missing": "_last"}}, *ID]),
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
        *ID,
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


def test_id_order_sorts_like_the_canonical_text() -> None:
    import random
    import uuid

    from services.documents import id_order

    rng = random.Random(3)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2_000)]
    ids += [str(uuid.UUID(int=0)), str(uuid.UUID(int=(1 << 128) - 1)), str(uuid.UUID(int=1 << 127))]
    ids += [str(uuid.UUID(int=(1 << 127) - 1)), str(uuid.UUID(int=(1 << 64) - 1))]
    assert sorted(ids, key=id_order) == sorted(ids)
    for doc_id in ids:
        hi, lo = id_order(doc_id)
        assert -(1 << 63) <= hi < (1 << 63) and -(1 << 63) <= lo < (1 << 63)

"""query/resume.py: the "at or before a boundary" query and the bounded boundary store.

The query is checked against an order computed here from Elasticsearch's sort rules
(ascending or descending, documents without a value first or last), through a small
evaluator of the few query kinds it may contain. The real Elasticsearch runs the same
queries in tests/e2e/test_query_deep_pages.py.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query.resume import Boundaries, End, at_or_before, bound_helps, shape_key
from query.sort import ID_DESC, sort_clauses
from services.prefect.sorting import ArtifactSort

Doc = dict[str, Any]


def matches(query: dict[str, Any], doc: Doc) -> bool:
    """What Elasticsearch would answer for one document (term/range/exists/bool only)."""
    ((kind, spec),) = query.items()
    if kind == "match_none":
        return False
    if kind == "exists":
        return doc.get(spec["field"]) is not None
    if kind == "term":
        ((field, value),) = spec.items()
        return doc.get(field) == value
    if kind == "range":
        ((field, bounds),) = spec.items()
        value = doc.get(field)
        if value is None:
            return False
        ((op, bound),) = bounds.items()
        return bool(value < bound if op == "lt" else value > bound)
    if kind == "bool":
        ok = all(matches(q, doc) for q in spec.get("filter", []))
        ok = ok and not any(matches(q, doc) for q in spec.get("must_not", []))
        if "should" in spec:
            hits = sum(matches(q, doc) for q in spec["should"])
            ok = ok and hits >= spec.get("minimum_should_match", 1)
        return ok
    raise AssertionError(f"unexpected query kind {kind}")


def es_order(sort: list[dict[str, Any]], docs: list[Doc]) -> list[Doc]:
    """Elasticsearch's order for ``sort``, written from its documented rules."""

    def compare(a: Doc, b: Doc) -> int:
        for clause in sort:
            ((field, spec),) = clause.items()
            desc = spec.get("order") == "desc"
            missing_first = spec.get("missing", "_last") == "_first"
            x, y = a.get(field), b.get(field)
            if x == y:
                continue
            if x is None or y is None:
                first_is_a = (x is None) == missing_first
                return -1 if first_is_a else 1
            less = x < y
            return (-1 if less else 1) * (-1 if desc else 1)
        return 0

    return sorted(docs, key=functools.cmp_to_key(compare))


def values_of(sort: list[dict[str, Any]], doc: Doc) -> list[Any]:
    return [doc.get(next(iter(clause))) for clause in sort]


KEYS = st.one_of(st.none(), st.sampled_from(["", "a", "a-b", "B", "b", "é", "z"]))


@st.composite
def documents(draw: st.DrawFn) -> list[Doc]:
    ids = draw(st.lists(st.integers(0, 30), min_size=1, max_size=25, unique=True))
    return [
        {
            "id_hi": draw(st.integers(0, 3)),
            "id_lo": i,
            "key": draw(KEYS),
            "created_us": draw(st.integers(0, 4)),
            "updated_us": draw(st.integers(0, 4)),
        }
        for i in ids
    ]


@settings(max_examples=400, deadline=None)
@given(documents(), st.sampled_from(list(ArtifactSort)), st.booleans(), st.data())
def test_at_or_before_is_exactly_the_first_documents(
    docs: list[Doc], sort_value: ArtifactSort, gone: bool, data: st.DataObject
) -> None:
    """Exactly the documents up to the boundary; when the boundary's own document was
    deleted since (`gone`), still exactly the ones before it."""
    sort = sort_clauses(sort_value, collection=False)
    ordered = es_order(sort, docs)
    cut = data.draw(st.integers(0, len(ordered) - 1))
    query = at_or_before(sort, values_of(sort, ordered[cut]))
    present = ordered[:cut] + ordered[cut + 1 :] if gone else ordered
    assert [d for d in present if matches(query, d)] == ordered[: cut + (not gone)]


def test_missing_first_and_last_without_a_value_at_the_boundary() -> None:
    desc = [{"key": {"order": "desc", "missing": "_first"}}, *ID_DESC]
    asc = [{"key": {"order": "asc", "missing": "_last"}}, *ID_DESC]
    docs = [
        {"key": None, "id_hi": 0, "id_lo": 2},
        {"key": None, "id_hi": 0, "id_lo": 1},
        {"key": "a", "id_hi": 0, "id_lo": 3},
    ]
    # DESC: no key first, so the boundary (None, 0, 1) has only (None, 0, 2) before it
    q = at_or_before(desc, [None, 0, 1])
    assert [d["id_lo"] for d in docs if matches(q, d)] == [2, 1]
    # ASC: no key last, so every keyed document comes first
    q = at_or_before(asc, [None, 0, 2])
    assert sorted(d["id_lo"] for d in docs if matches(q, d)) == [2, 3]


def test_wrong_number_of_values_is_refused() -> None:
    with pytest.raises(ValueError, match="sort values"):
        at_or_before(ID_DESC, [1])


def test_boundaries_start_at_the_nearest_within_reach() -> None:
    marks = Boundaries(shapes=4)
    shape = shape_key("artifacts", {"match_all": {}}, ID_DESC)
    assert marks.start(shape, 200, max_skip=200) is None
    marks.remember(shape, 200, [1, 2])
    marks.remember(shape, 400, [3, 4])
    start = marks.start(shape, 400, max_skip=200)
    assert start is not None and (start.boundary, start.values, start.skip) == (400, [3, 4], 0)
    start = marks.start(shape, 450, max_skip=200)
    assert start is not None and (start.boundary, start.skip) == (400, 50)
    assert marks.start(shape, 150, max_skip=200) is None  # nothing at or before 150
    assert marks.start(shape, 700, max_skip=200) is None  # 400 is 300 away
    marks.forget(shape, 400)
    start = marks.start(shape, 400, max_skip=200)
    assert start is not None and start.boundary == 200


def test_boundaries_are_bounded_least_recently_used_first() -> None:
    marks = Boundaries(shapes=2, per_shape=2)
    a, b, c = (shape_key("i", {"term": {"k": n}}, ID_DESC) for n in range(3))
    marks.remember(a, 1, [1])
    marks.remember(b, 1, [1])
    assert marks.start(a, 1, 0) is not None  # a used: b is now the oldest
    marks.remember(c, 1, [1])
    assert len(marks) == 2
    assert marks.start(b, 1, 0) is None and marks.start(a, 1, 0) is not None
    for n in (1, 2, 3):
        marks.remember(a, n, [n])
    assert marks.start(a, 1, 0) is None  # the oldest boundary of `a` went
    assert marks.start(a, 3, 0) is not None


def test_zero_shapes_remembers_nothing() -> None:
    marks = Boundaries(shapes=0)
    shape = shape_key("i", {}, ID_DESC)
    marks.remember(shape, 5, [1])
    assert marks.start(shape, 5, 10) is None


def test_shape_key_ignores_dict_order_but_not_content() -> None:
    one = shape_key("i", {"bool": {"filter": [1], "must_not": [2]}}, ID_DESC)
    two = shape_key("i", {"bool": {"must_not": [2], "filter": [1]}}, ID_DESC)
    assert one == two
    assert one != shape_key("j", {"bool": {"filter": [1], "must_not": [2]}}, ID_DESC)


def test_shape_key_takes_a_lone_surrogate() -> None:
    """Prefect accepts `"\\ud800"` in a filter value; the key must not fail on it."""
    one = shape_key("i", {"terms": {"key": ["\ud800"]}}, ID_DESC)
    assert one != shape_key("i", {"terms": {"key": ["\ud801"]}}, ID_DESC)


@settings(max_examples=300, deadline=None)
@given(documents(), documents(), st.sampled_from(list(ArtifactSort)), st.data())
def test_a_page_bounded_by_an_old_end_is_its_slice_when_the_prefix_holds_it(
    docs: list[Doc], added: list[Doc], sort_value: ArtifactSort, data: st.DataObject
) -> None:
    """A page's end remembered from an earlier answer, then documents deleted and added:
    the documents at or before that end, in order, start with the page whenever there
    are enough of them (else the repository searches again without the bound)."""
    sort = sort_clauses(sort_value, collection=False)
    ordered = es_order(sort, docs)
    offset = data.draw(st.integers(0, len(ordered) - 1))
    limit = data.draw(st.integers(1, len(ordered) - offset))
    end = values_of(sort, ordered[offset + limit - 1])
    deleted = data.draw(st.sets(st.integers(0, len(ordered) - 1)))
    ids = {(d["id_hi"], d["id_lo"]) for d in docs}
    present = [d for i, d in enumerate(docs) if i not in deleted] + [
        d for d in added if (d["id_hi"], d["id_lo"]) not in ids
    ]
    now = es_order(sort, present)
    bounded = [d for d in now if matches(at_or_before(sort, end), d)]
    assert bounded == now[: len(bounded)]  # a prefix of today's order
    if len(bounded) >= offset + limit:
        assert bounded[offset : offset + limit] == now[offset : offset + limit]


def test_boundaries_end_at_the_nearest_within_reach() -> None:
    marks = Boundaries(shapes=4)
    for b in (50, 100, 230):
        marks.remember(b"s", b, [b])
    assert marks.end(b"s", 100, 50) == End(100, [100])
    assert marks.end(b"s", 60, 50) == End(100, [100])
    assert marks.end(b"s", 101, 50) is None  # 230 is too far
    assert marks.end(b"s", 101, 200) == End(230, [230])
    assert marks.end(b"other", 0, 1_000) is None
    marks.forget(b"s", 100)
    assert marks.end(b"s", 60, 50) is None


def test_only_orders_elasticsearch_cannot_skip_are_bounded() -> None:
    assert bound_helps(sort_clauses(ArtifactSort.KEY_ASC, collection=False))
    assert bound_helps(sort_clauses(ArtifactSort.KEY_DESC, collection=True))
    for other in (ArtifactSort.ID_DESC, ArtifactSort.CREATED_DESC, ArtifactSort.UPDATED_DESC):
        assert not bound_helps(sort_clauses(other, collection=False))
    assert not bound_helps([])

"""Continue Prefect's offset paging from a page boundary already seen.

Prefect's UI and clients page with ``offset`` 0, 200, 400, ... Answered from the
start each time, a page at offset ``n`` makes Elasticsearch rank ``n + size`` hits
(every shard returns that many sort values). The query service remembers, per
index, query and sort, the sort values of the hits at page boundaries (the last hit
before a page and a page's last hit). A request whose offset is at, or a little
after, a remembered boundary ``b`` asks only for the hits after those sort values
(``search_after``), and in the same request counts, with a ``filter``
aggregation, the matching documents that sort at or before them.

Why that is exact: the sort is total (``query.sort`` ends with the unique id), so
if exactly ``b`` matching documents sort at or before the boundary values, they are
the first ``b`` of a ranking from the start, and the hits after the values are
positions ``b``, ``b + 1``, ... of that ranking, whatever was written since the
boundary was seen and whether or not the boundary's own document still exists. One
request means one searcher per shard for the hits and the count, like any
``from``/``size`` search. When the count differs (a write moved documents across
the boundary), the boundary is forgotten and the page is searched from the start.
The remembered values are never trusted, only checked, so the cache needs no
invalidation; it only has to be bounded.

A page asked again (a UI polling its current page, a client repeating a request) also
has a boundary at its *end*: the page's last hit, remembered when it was answered. Where
the bound was measured to pay (``bound_helps``: a sort on ``key``), the page is then
searched only among the
documents that sort at or before that end (``at_or_before``). Exact for the same reason:
those documents are a prefix of the ranking, so when the prefix still holds the whole
page, its hits are the page; when it holds fewer (documents deleted or moved), the
bound is forgotten and the page searched without it.

Pure: no I/O. `query.repository` does the requests.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from query.sort import SortClause
from query.translate import MATCH_NONE, Query


@dataclass(frozen=True, slots=True)
class _Key:
    field: str
    descending: bool
    missing_first: bool


def _sort_keys(sort: Sequence[SortClause]) -> list[_Key]:
    out = []
    for clause in sort:
        ((field, spec),) = clause.items()
        if isinstance(spec, str):  # {"field": "desc"}
            spec = {"order": spec}
        descending = spec.get("order", "asc") == "desc"
        # Elasticsearch's default places documents without a value last in either order
        missing_first = spec.get("missing", "_last") == "_first"
        out.append(_Key(field, descending, missing_first))
    return out


def _missing(field: str) -> Query:
    return {"bool": {"must_not": [{"exists": {"field": field}}]}}


def _equal(key: _Key, value: Any) -> Query:
    if value is None:
        return _missing(key.field)
    return {"term": {key.field: value}}


def _strictly_before(key: _Key, value: Any) -> Query:
    if value is None:  # the boundary has no value: only the other group can come first
        return MATCH_NONE if key.missing_first else {"exists": {"field": key.field}}
    before: Query = {"range": {key.field: {"gt" if key.descending else "lt": value}}}
    if key.missing_first:
        return {"bool": {"should": [before, _missing(key.field)], "minimum_should_match": 1}}
    return before


def at_or_before(sort: Sequence[SortClause], values: Sequence[Any]) -> Query:
    """Documents whose sort values come at or before ``values`` in the order ``sort``.

    Lexicographic: strictly before on the first clause, or equal on it and at or
    before on the rest; equal on every clause is the boundary document itself.
    """
    keys = _sort_keys(sort)
    if len(keys) != len(values):
        raise ValueError(f"{len(values)} sort values for {len(keys)} sort clauses")
    branches: list[Query] = []
    for i, key in enumerate(keys):
        prefix = [_equal(k, v) for k, v in zip(keys[:i], values[:i], strict=True)]
        first = _strictly_before(key, values[i])
        if first == MATCH_NONE:
            continue
        branches.append({"bool": {"filter": [*prefix, first]}} if prefix else first)
    branches.append({"bool": {"filter": [_equal(k, v) for k, v in zip(keys, values, strict=True)]}})
    return {"bool": {"should": branches, "minimum_should_match": 1}}


_BOUNDED_SORT_FIELDS = frozenset({"key"})
"""First sort fields where a page searched among the documents at or before its end was
measured cheaper: by `key` (a keyword) a first page of 50 took 5-6 ms unbounded and 3.5 ms
bounded on 100k artifacts; by `created_us` (a point field) 4.5 ms either way, and by the
index's own sort, id, 2.7 ms against 5.4 ms bounded."""


def bound_helps(sort: Sequence[SortClause]) -> bool:
    """Whether searching only the documents at or before a page's end makes its search
    cheaper: the order's first field is one where that was measured to pay."""
    return bool(sort) and _sort_keys(sort[:1])[0].field in _BOUNDED_SORT_FIELDS


def shape_key(index: str, query: Query, sort: Sequence[SortClause]) -> bytes:
    """What makes two requests rank the same documents the same way."""
    shape = [index, query, list(sort)]
    try:
        return orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a lone surrogate in a filter value: valid JSON, not valid UTF-8
        return json.dumps(shape, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Start:
    """Where to continue: skip ``skip`` hits after ``values``; ``boundary`` documents
    must sort at or before them."""

    boundary: int
    values: list[Any]
    skip: int


@dataclass(frozen=True, slots=True)
class End:
    """A page's end: ``boundary`` documents sort at or before ``values`` (when it was seen)."""

    boundary: int
    values: list[Any]


class Boundaries:
    """Page boundaries per query shape, least recently used shapes dropped first.

    ``shapes`` bounds the query shapes, ``per_shape`` the boundaries kept for one
    shape (the most recently seen). ``shapes=0`` remembers nothing.
    """

    def __init__(self, shapes: int, per_shape: int = 32) -> None:
        if shapes < 0 or per_shape < 1:
            raise ValueError("shapes must be >= 0 and per_shape >= 1")
        self.shapes = shapes
        self.per_shape = per_shape
        self._data: OrderedDict[bytes, OrderedDict[int, list[Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def enabled(self) -> bool:
        """False when nothing is ever remembered (``shapes=0``)."""
        return self.shapes > 0

    def start(self, shape: bytes, offset: int, max_skip: int) -> Start | None:
        """The nearest boundary at or before ``offset`` within ``max_skip`` hits, if any."""
        marks = self._data.get(shape)
        if not marks or offset < 1:
            return None
        best = max((b for b in marks if 0 < b <= offset and offset - b <= max_skip), default=None)
        if best is None:
            return None
        self._data.move_to_end(shape)
        marks.move_to_end(best)
        return Start(best, marks[best], offset - best)

    def end(self, shape: bytes, at_least: int, max_extra: int) -> End | None:
        """The nearest boundary at or after ``at_least`` within ``max_extra`` hits, if any."""
        marks = self._data.get(shape)
        if not marks:
            return None
        best = min((b for b in marks if at_least <= b <= at_least + max_extra), default=None)
        return None if best is None else End(best, marks[best])

    def remember(self, shape: bytes, boundary: int, values: Sequence[Any]) -> None:
        """``values`` are the sort values of the hit at position ``boundary - 1``."""
        if self.shapes == 0 or boundary < 1:
            return
        marks = self._data.get(shape)
        if marks is None:
            marks = self._data[shape] = OrderedDict()
            while len(self._data) > self.shapes:
                self._data.popitem(last=False)
        self._data.move_to_end(shape)
        marks[boundary] = list(values)
        marks.move_to_end(boundary)
        while len(marks) > self.per_shape:
            marks.popitem(last=False)

    def forget(self, shape: bytes, boundary: int) -> None:
        """A boundary the count contradicted: documents moved across it."""
        marks = self._data.get(shape)
        if marks is not None:
            marks.pop(boundary, None)

"""PURE: the search extension (`POST /ext/v1/artifacts/search`, docs/search.md).

Beyond Prefect's filters: a full-text query string over the artifacts' text (key,
description, data, metadata — `services/search_text.py`), created/updated ranges, any
sort, opaque cursors (point in time + `search_after`), a field selector, exact totals on
request, multi-select facets and a latest-per-key mode. A search always composes with
a Prefect filter object (the body of `/api/artifacts/filter` or `/latest/filter`), so its
answer is a subset of what Prefect's endpoint would return for that filter.

Everything here builds request bodies and reads responses: dicts in, dicts out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from query.translate import (
    Query,
    epoch_us,
    translate_artifact_query,
    translate_collection_query,
)
from services.documents import (
    ARTIFACT_RESPONSE_FIELDS,
    COLLECTION_RESPONSE_FIELDS,
    format_micros,
)
from services.errors import TranslationError
from services.prefect.requests import ArtifactCollectionCountRequest, ArtifactCountRequest
from services.search_text import (
    MAX_KEY_CHARS,
    SEP,
    encode_micros,
    encode_number,
    parse_micros,
    parse_number,
)

MAX_LIMIT = 200
PIT_KEEP_ALIVE = "5m"

# -- the query string ---------------------------------------------------------------------
TEXT_FIELDS: dict[str, str] = {
    "key": "x.key",
    "description": "x.description",
    "data": "x.data",
    "metadata": "x.metadata",
}
"""Analysed text: words match, case-insensitively."""

EXACT_FIELDS: dict[str, str] = {
    "type": "type",
    "flow": "flow.name",
    "deployment": "dep.name",
    "flow_run": "fr.name",
    "task_run": "tr.name",
    "state": "fr.state_type",
    "task_run_state": "tr.state_type",
    "tags": "fr.tags",
}
"""Exact values (case-sensitive): `type:markdown`, `state:COMPLETED`, `tags:prod`."""

QUERY_FIELDS = {**TEXT_FIELDS, **EXACT_FIELDS}
DEFAULT_FIELDS = ["x.key^3", "x.description^2", "x.data", "x.metadata"]
"""What a word without a field prefix is searched in (a key match ranks highest)."""

_FIELD_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*):")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def rewrite_fields(q: str) -> str:
    """`q` with the user's field names (`data:emea`) replaced by the index's; an unknown
    field name is an error (nothing else of the index can be reached by a query)."""
    out: list[str] = []
    i, n = 0, len(q)
    in_quotes = False
    at_start = True  # at the start of a term: a field name may begin here
    while i < n:
        ch = q[i]
        if ch == "\\" and i + 1 < n:
            out.append(q[i : i + 2])
            i += 2
            at_start = False
            continue
        if ch == '"':
            in_quotes = not in_quotes
            out.append(ch)
            i += 1
            at_start = False
            continue
        if not in_quotes and at_start:
            match = _FIELD_PREFIX.match(q, i)
            if match:
                name = match.group(1)
                if name == "_exists_":  # `_exists_:data`: the field is the value
                    target = _NAME.match(q, match.end())
                    if target is None:
                        raise TranslationError("_exists_: needs a field name.")
                    out.append("_exists_:" + _mapped(target.group(0)))
                    i = target.end()
                    at_start = False
                    continue
                out.append(_mapped(name) + ":")
                i = match.end()
                at_start = True  # `key:(a OR b)` and `key:value` both follow
                continue
        out.append(ch)
        at_start = not in_quotes and (ch.isspace() or ch in "()+-!")
        i += 1
    if in_quotes:
        raise TranslationError("The query has an unclosed quote.")
    return "".join(out)


def _mapped(name: str) -> str:
    if name not in QUERY_FIELDS:
        raise TranslationError(
            f"Unknown field {name!r} in the query. Searchable fields: "
            + ", ".join(sorted(QUERY_FIELDS))
            + " (quote a value that contains a colon, e.g. a URL)."
        )
    return QUERY_FIELDS[name]


def text_query(q: str) -> Query:
    """The `query_string` clause of a user's query (AND between words by default)."""
    return {
        "query_string": {
            "query": rewrite_fields(q),
            "fields": DEFAULT_FIELDS,
            "default_operator": "AND",
            "allow_leading_wildcard": False,
            "analyze_wildcard": False,
            "fuzzy_max_expansions": 20,
            "max_determinized_states": 10_000,
        }
    }


# -- the request ----------------------------------------------------------------------------
SortField = Literal["relevance", "created", "updated", "key", "type", "flow_name"]
FacetName = Literal[
    "type", "key", "flow", "deployment", "flow_run_state", "task_run_state", "tags", "created"
]
SelectableFacet = Literal[
    "type", "key", "flow", "deployment", "flow_run_state", "task_run_state", "tags"
]

FACET_FIELDS: dict[str, str] = {
    "type": "type",
    "key": "key",
    "flow": "flow.name",
    "deployment": "dep.name",
    "flow_run_state": "fr.state_type",
    "task_run_state": "tr.state_type",
    "tags": "fr.tags",
}
HISTOGRAM_US: dict[str, int] = {
    "hour": 3_600_000_000,
    "day": 86_400_000_000,
    "week": 7 * 86_400_000_000,
}
_MONDAY_US = 4 * 86_400_000_000  # 1970-01-05, a Monday: weeks start on Mondays

_SORT_FIELDS: dict[str, str] = {
    "created": "created_us",
    "updated": "updated_us",
    "key": "key",
    "type": "type",
    "flow_name": "flow.name",
}
_TIEBREAK: list[dict[str, Any]] = [{"id_hi": {"order": "desc"}}, {"id_lo": {"order": "desc"}}]


class TimeRange(BaseModel):
    """An interval of time: `after` inclusive, `before` exclusive (either may be left out)."""

    model_config = ConfigDict(extra="forbid")
    after: AwareDatetime | None = None
    before: AwareDatetime | None = None


class Condition(BaseModel):
    """A typed condition on a value of `metadata` or `data` (docs/search.md, "Values")."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(
        min_length=4,
        max_length=MAX_KEY_CHARS,
        pattern=r"^(metadata|data)(\.[^\x00]+)?$",
        description="`metadata.<key>`, `data` (a progress value), `data.<column>` of a "
        "table or `data.<path>` of JSON data",
    )
    op: Literal["eq", "in", "gt", "gte", "lt", "lte", "exists"]
    value: str | float | bool | AwareDatetime | list[str | float | bool] | None = Field(
        None,
        description="a string, number, boolean or timestamp (`gt`..`lte`: a number or a "
        "timestamp); a list for `in`; nothing for `exists`",
    )


class SortSpec(BaseModel):
    """One sort key; ties are always broken by id, descending."""

    model_config = ConfigDict(extra="forbid")
    field: SortField
    order: Literal["asc", "desc"] = "desc"


class SearchRequest(BaseModel):
    """A search. Every part is optional: an empty body lists every live artifact."""

    model_config = ConfigDict(extra="forbid")
    q: str | None = Field(
        None,
        max_length=4_000,
        description=(
            'Query string: words (all must match), "phrases", AND/OR/NOT, (groups), '
            "field:value with the fields key, description, data, metadata (words) and "
            "type, flow, deployment, flow_run, task_run, state, task_run_state, tags "
            "(exact values), prefix*, fuzzy~, _exists_:field."
        ),
    )
    prefect_filter: ArtifactCountRequest | None = Field(
        None,
        description="A filter with the semantics of POST /api/artifacts/filter (artifacts mode).",
    )
    prefect_latest_filter: ArtifactCollectionCountRequest | None = Field(
        None,
        description="A filter with the semantics of POST /api/artifacts/latest/filter "
        "(latest_per_key mode).",
    )
    latest_per_key: bool = Field(
        False, description="Search the latest artifact of each key (Prefect's collections)."
    )
    created: TimeRange | None = None
    updated: TimeRange | None = None
    where: list[Condition] = Field(
        default_factory=list,
        max_length=20,
        description="Typed conditions on metadata and data values, all of which must hold.",
    )
    sort: list[SortSpec] = Field(
        default_factory=list,
        max_length=3,
        description="Default: relevance when `q` is given, else created descending.",
    )
    limit: int = Field(20, ge=0, le=MAX_LIMIT)
    cursor: str | None = Field(
        None,
        max_length=8_000,
        description="`next_cursor` of the previous page; the rest of the body must not change.",
    )
    fields: list[str] | None = Field(
        None,
        description="Fields of each artifact to return (default: all of them; `latest_id` "
        "in latest_per_key mode only).",
        json_schema_extra={"items": {"type": "string", "enum": list(COLLECTION_RESPONSE_FIELDS)}},
    )
    track_total: bool = Field(False, description="Count every match exactly (`total`).")
    highlight: bool = Field(True, description="Return highlighted snippets of the matches.")
    facets: list[FacetName] = Field(default_factory=list)
    facet_size: int = Field(10, ge=1, le=100)
    histogram: Literal["hour", "day", "week"] = Field(
        "day", description="Bucket width of the `created` facet (UTC; weeks from Monday)."
    )
    selected: dict[SelectableFacet, list[str]] = Field(
        default_factory=dict,
        description="Facet values to keep (any of a facet's values, all facets): each "
        "facet's counts ignore its own selection (multi-select faceting).",
    )


class Bucket(BaseModel):
    """One facet value and how many matches have it."""

    value: str
    count: int


class Hit(BaseModel):
    """One match: the artifact (the selected fields), its relevance and snippets."""

    artifact: dict[str, Any]
    score: float | None = None
    highlight: dict[str, list[str]] | None = None


class SearchResponse(BaseModel):
    """A page of matches."""

    hits: list[Hit]
    next_cursor: str | None = Field(None, description="Pass it back for the next page.")
    total: int | None = Field(None, description="Exact number of matches (`track_total`).")
    facets: dict[str, list[Bucket]] | None = Field(
        None, description="Facet counts (the first page only)."
    )


# -- the body -------------------------------------------------------------------------------
def _range(field: str, span: TimeRange | None) -> list[Query]:
    if span is None or (span.after is None and span.before is None):
        return []
    bounds: dict[str, int] = {}
    if span.after is not None:
        bounds["gte"] = epoch_us(span.after)
    if span.before is not None:
        bounds["lt"] = epoch_us(span.before)
    return [{"range": {field: bounds}}]


def _term(kind: str, key: str, value: str | float | bool | datetime) -> Query:
    return {"term": {f"v.{kind}": f"{key}{SEP}{_encoded(kind, value)}"}}


def _kind(value: str | float | bool | datetime) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int | float):
        return "n"
    if isinstance(value, datetime):
        return "d"
    return "s"


def _encoded(kind: str, value: str | float | bool | datetime) -> str:
    if kind == "b":
        return "true" if value else "false"
    if kind == "n":
        assert isinstance(value, int | float)
        if not math.isfinite(value):
            raise TranslationError("Numbers in conditions must be finite.")
        return encode_number(value)
    if kind == "d":
        assert isinstance(value, datetime)
        return encode_micros(epoch_us(value))
    return str(value)


_RANGE_OPS = {"gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}


def condition_clause(cond: Condition) -> Query:
    """The filter of one typed condition (terms of the `v` object)."""
    key, value = cond.field, cond.value
    if cond.op == "exists":
        if value is not None:
            raise TranslationError(f"{key}: `exists` takes no value.")
        return {"term": {"v.k": key}}
    if cond.op == "in":
        if not isinstance(value, list) or not value:
            raise TranslationError(f"{key}: `in` takes a non-empty list of values.")
        return {
            "bool": {"should": [_term(_kind(v), key, v) for v in value], "minimum_should_match": 1}
        }
    if value is None or isinstance(value, list):
        raise TranslationError(f"{key}: `{cond.op}` takes one value.")
    if cond.op == "eq":
        return _term(_kind(value), key, value)
    kind = _kind(value)
    if kind == "s":  # JSON has no timestamps: a string that spells one, or a number
        assert isinstance(value, str)
        micros, number = parse_micros(value), parse_number(value)
        if micros is not None:
            kind, encoded = "d", encode_micros(micros)
        elif number is not None:
            kind, encoded = "n", encode_number(number)
        else:
            raise TranslationError(f"{key}: `{cond.op}` compares numbers or timestamps.")
    else:
        encoded = _encoded(kind, value)
    if kind == "b":
        raise TranslationError(f"{key}: `{cond.op}` compares numbers or timestamps.")
    bound = f"{key}{SEP}{encoded}"
    # every term of this key lies between `key\x00` and `key\x01`
    lower, upper = {"gte": f"{key}{SEP}"}, {"lt": f"{key}\x01"}
    edge = {_RANGE_OPS[cond.op]: bound}
    span = {**upper, **edge} if cond.op in ("gt", "gte") else {**lower, **edge}
    return {"range": {f"v.{kind}": span}}


def base_query(req: SearchRequest) -> Query:
    """Prefect's filter, the text query and the ranges (not the facet selections)."""
    if req.latest_per_key:
        if req.prefect_filter is not None:
            raise TranslationError(
                "latest_per_key takes prefect_latest_filter, not prefect_filter."
            )
        f = req.prefect_latest_filter or ArtifactCollectionCountRequest()
        prefect = translate_collection_query(
            f.artifacts, f.flow_runs, f.task_runs, f.flows, f.deployments
        )
    else:
        if req.prefect_latest_filter is not None:
            raise TranslationError("prefect_latest_filter needs latest_per_key: true.")
        g = req.prefect_filter or ArtifactCountRequest()
        prefect = translate_artifact_query(
            g.artifacts, g.flow_runs, g.task_runs, g.flows, g.deployments
        )
    filters = list(prefect["bool"]["filter"])
    filters += _range("created_us", req.created) + _range("updated_us", req.updated)
    filters += [condition_clause(c) for c in req.where]
    query: dict[str, Any] = {"filter": filters}
    if req.q and req.q.strip():
        query["must"] = [text_query(req.q)]
    return {"bool": query}


def _selection(req: SearchRequest, leave_out: str | None = None) -> list[Query]:
    return [
        {"terms": {FACET_FIELDS[name]: values}}
        for name, values in sorted(req.selected.items())
        if name != leave_out
    ]


def sort_of(req: SearchRequest) -> list[dict[str, Any]]:
    """The sort array: the requested keys, then id descending."""
    specs = req.sort or [
        SortSpec(field="relevance" if req.q and req.q.strip() else "created", order="desc")
    ]
    out: list[dict[str, Any]] = []
    for spec in specs:
        if spec.field == "relevance":
            out.append({"_score": {"order": spec.order}})
        else:
            missing = "_last" if spec.order == "asc" else "_first"
            out.append({_SORT_FIELDS[spec.field]: {"order": spec.order, "missing": missing}})
    return out + _TIEBREAK


def response_fields(req: SearchRequest) -> list[str]:
    """The `_source` fields to return."""
    allowed = COLLECTION_RESPONSE_FIELDS if req.latest_per_key else ARTIFACT_RESPONSE_FIELDS
    if req.fields is None:
        return list(allowed)
    wrong = [f for f in req.fields if f not in allowed]
    if wrong:
        raise TranslationError(f"Not a field of this mode's results: {', '.join(wrong)}.")
    return list(dict.fromkeys(req.fields))


def _aggregations(req: SearchRequest) -> dict[str, Any]:
    aggs: dict[str, Any] = {}
    for name in dict.fromkeys(req.facets):
        if name == "created":
            inner: dict[str, Any] = {
                "histogram": {
                    "field": "created_us",
                    "interval": HISTOGRAM_US[req.histogram],
                    "offset": _MONDAY_US if req.histogram == "week" else 0,
                    "min_doc_count": 1,
                }
            }
            others = _selection(req)
        else:
            inner = {"terms": {"field": FACET_FIELDS[name], "size": req.facet_size}}
            others = _selection(req, leave_out=name)
        aggs[name] = {"filter": {"bool": {"filter": others}}, "aggs": {"v": inner}}
    return aggs


def fingerprint(req: SearchRequest) -> str:
    """What a cursor is bound to: the request without its cursor."""
    raw = req.model_dump_json(exclude={"cursor"}).encode()
    return hashlib.blake2b(raw, digest_size=9).hexdigest()


def build_body(req: SearchRequest, *, first_page: bool) -> dict[str, Any]:
    """The `_search` body (without `pit` and `search_after`, which the adapter adds)."""
    selection = _selection(req)
    body: dict[str, Any] = {
        "query": base_query(req),
        "sort": sort_of(req),
        "size": req.limit,
        "_source": {"includes": response_fields(req)},
        "track_total_hits": req.track_total,
        "track_scores": True,
    }
    if selection:
        body["post_filter"] = {"bool": {"filter": selection}}
    if req.highlight and req.q and req.q.strip():
        body["highlight"] = {
            "fields": {f: {} for f in TEXT_FIELDS.values()},
            "pre_tags": ["<mark>"],
            "post_tags": ["</mark>"],
            "encoder": "html",
            "fragment_size": 160,
            "number_of_fragments": 3,
        }
    if first_page and req.facets:
        body["aggs"] = _aggregations(req)
    return body


# -- cursors --------------------------------------------------------------------------------
class CursorError(TranslationError):
    """A cursor that is malformed, expired or for another request."""


def encode_cursor(pit_id: str, after: list[Any], req: SearchRequest) -> str:
    """An opaque cursor: the point in time, the last hit's sort values, the request."""
    raw = orjson.dumps({"p": pit_id, "a": after, "f": fingerprint(req)})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, req: SearchRequest) -> tuple[str, list[Any]]:
    """(point in time id, search_after) of a cursor made for this request."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
        pit_id, after, bound = value["p"], value["a"], value["f"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise CursorError("The cursor is not one this service made.") from exc
    if not isinstance(pit_id, str) or not isinstance(after, list):
        raise CursorError("The cursor is not one this service made.")
    if bound != fingerprint(req):
        raise CursorError(
            "The cursor belongs to another search: send the same body with the cursor."
        )
    return pit_id, after


# -- the response ---------------------------------------------------------------------------
_HIGHLIGHT_NAMES = {v: k for k, v in TEXT_FIELDS.items()}


def read_hits(resp: dict[str, Any]) -> list[Hit]:
    """The hits of a `_search` answer."""
    out: list[Hit] = []
    for hit in resp.get("hits", {}).get("hits", []):
        highlight = hit.get("highlight")
        out.append(
            Hit(
                artifact=hit.get("_source", {}),
                score=hit.get("_score"),
                highlight=None
                if not highlight
                else {_HIGHLIGHT_NAMES.get(k, k): v for k, v in highlight.items()},
            )
        )
    return out


def read_facets(resp: dict[str, Any], req: SearchRequest) -> dict[str, list[Bucket]] | None:
    """The facet counts of a first page's answer."""
    aggs = resp.get("aggregations")
    if not req.facets or aggs is None:
        return None
    out: dict[str, list[Bucket]] = {}
    for name in dict.fromkeys(req.facets):
        buckets = aggs[name]["v"]["buckets"]
        if name == "created":
            out[name] = [
                Bucket(value=format_micros(int(b["key"])), count=b["doc_count"]) for b in buckets
            ]
        else:
            out[name] = [
                Bucket(value=str(b.get("key_as_string", b["key"])), count=b["doc_count"])
                for b in buckets
            ]
    return out

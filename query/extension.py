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
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from query.conditions import Condition, condition_clause
from query.histogram import MAX_BUCKETS, Width, check_range, histogram_agg, read_buckets
from query.query_string import TEXT_FIELDS, text_query
from query.translate import (
    Query,
    epoch_us,
    translate_artifact_query,
    translate_collection_query,
)
from services.documents import (
    ARTIFACT_RESPONSE_FIELDS,
    COLLECTION_RESPONSE_FIELDS,
)
from services.errors import TranslationError
from services.prefect.requests import ArtifactCollectionCountRequest, ArtifactCountRequest

MAX_LIMIT = 200
PIT_KEEP_ALIVE = "5m"

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

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.after is not None and self.before is not None and self.after > self.before:
            raise ValueError(
                f"after ({self.after.isoformat()}) is later than before "
                f"({self.before.isoformat()}): the range is empty"
            )
        return self


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
            "(exact values), prefix*, fuzzy~, _exists_:field. Typed conditions on values, "
            "meaning what the same `where` condition means: metadata.<key> or "
            "data.<column> (data alone: a progress value) with >=, >, <=, < and a number "
            "or an ISO 8601 timestamp (`metadata.accuracy >= 0.9`, `metadata.run_at < "
            "2024-06-01`), `metadata.x:[1 TO 5}` (both bounds must hold; * for open), "
            '`data.region:emea` (eq: bare numbers and true/false are typed, "quoted" '
            "text is a string), `data.region:(emea OR apac)` (in, typed the same way), "
            "`_exists_:metadata.owner`. A malformed one is a 422."
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
    histogram: Width = Field(
        "day",
        description="Bucket width of the `created` facet (UTC; weeks from Monday; calendar "
        f"months and years); at most {MAX_BUCKETS:,} buckets, else a 422.",
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
    score: float | None = Field(
        None, description="Relevance, when the sort includes `relevance`; else null."
    )
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
            if req.created is not None:
                check_range(req.created.after, req.created.before, req.histogram)
            inner: dict[str, Any] = histogram_agg(req.histogram)
            others = _selection(req)
        else:
            inner = {"terms": {"field": FACET_FIELDS[name], "size": req.facet_size}}
            others = _selection(req, leave_out=name)
        # under the other facets' selections; without any, the plain aggregation (the
        # wrapper alone cost 10-20 ms at 1M matches-heavy queries: it is collected per hit)
        aggs[name] = (
            {"filter": {"bool": {"filter": others}}, "aggs": {"v": inner}} if others else inner
        )
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
        # scores only where the order uses them: `track_scores` under another order scores
        # every match and turns off the sort's skipping of non-competitive documents (at 1M
        # a created-descending cursor page took 29 ms with it, 6 ms without)
        "track_scores": False,
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
        node = aggs[name]
        buckets = node.get("v", node)["buckets"]
        if name == "created":
            out[name] = [
                Bucket(value=value, count=count)
                for value, count in read_buckets(buckets, req.histogram)
            ]
        else:
            out[name] = [
                Bucket(value=str(b.get("key_as_string", b["key"])), count=b["doc_count"])
                for b in buckets
            ]
    return out

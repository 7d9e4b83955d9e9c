"""PURE: saved searches, the change feed's records, alert messages and evaluation bodies.

A saved search holds the body of a `POST /ext/v1/artifacts/search` request (validated by
the same model) and optionally a webhook. The alerts worker evaluates every saved search
on each batch of changed artifact ids (the indexer's change feed): the saved search's
query AND an `ids` filter, one `_msearch`. Each match is an alert identified by
(saved search id, the search's query fingerprint, artifact id, the artifact's version):
the same artifact version never alerts twice for the same query, whatever redelivers or
replays the change (docs/adr/0008-alerts-without-percolator.md). A saved search in
latest_per_key mode is evaluated on the changed collections (a key's latest artifact) and
alerts once per (saved search, fingerprint, latest artifact id, its version).

Dicts in, dicts out: no Elasticsearch or Kafka imports here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from query.extension import (
    FACET_FIELDS,
    SearchRequest,
    base_query,
    response_fields,
)
from services.errors import TranslationError


# -- saved searches --------------------------------------------------------------------------
class Webhook(BaseModel):
    """Where alerts of a saved search are POSTed (JSON, the alert message as the body)."""

    model_config = ConfigDict(extra="forbid")
    url: AnyHttpUrl = Field(description="http(s) URL; receives one POST per alert")


class SavedSearchIn(BaseModel):
    """What a client sends to create or replace a saved search."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2_000)
    search: SearchRequest = Field(
        description="A body of POST /ext/v1/artifacts/search (artifacts mode, no cursor). "
        "`q`, `prefect_filter`, `created`, `updated`, `where` and `selected` decide what "
        "matches; `fields` selects the artifact fields an alert carries."
    )
    webhook: Webhook | None = Field(None, description="Also POST each alert to this URL.")
    notify_existing: bool = Field(
        False,
        description="Also alert the artifacts that already match when the search is saved "
        "or its query changes (a bounded scan: at most ALERTS_EXISTING_SCAN_MAX matches, "
        "newest first). Default false: only artifacts that change afterwards alert.",
    )


class SavedSearch(SavedSearchIn):
    """A stored saved search."""

    id: str = Field(description="Assigned by the service (a UUID).")
    existing_scan: Literal["pending", "done"] | None = Field(
        None,
        description="With notify_existing: whether the alerts worker has scanned the "
        "existing artifacts for the current fingerprint yet (null without notify_existing).",
    )
    created: str
    updated: str
    fingerprint: str = Field(
        description="Hash of the parts of `search` that decide what matches; an alert is "
        "raised once per (saved search, fingerprint, artifact id, artifact version)."
    )


class SavedSearchList(BaseModel):
    """Every saved search, oldest first."""

    saved_searches: list[SavedSearch]


MATCHING_PARTS = frozenset({"q", "prefect_filter", "created", "updated", "where", "selected"})
LATEST_PARTS = frozenset({"latest_per_key", "prefect_latest_filter"})
"""Part of the fingerprint in latest_per_key mode only (artifacts-mode fingerprints stay
what they were before that mode could be saved)."""


def check_saved_search(body: SavedSearchIn) -> None:
    """Refuse what a saved search cannot hold (TranslationError, a 422 at the edge)."""
    search = body.search
    if search.cursor is not None:
        raise TranslationError("A saved search holds no cursor.")
    base_query(search)  # the query, the conditions and the filter translate
    response_fields(search)


def query_fingerprint(search: SearchRequest) -> str:
    """A hash of the parts of a search that decide what matches (not its presentation)."""
    parts = MATCHING_PARTS | LATEST_PARTS if search.latest_per_key else MATCHING_PARTS
    raw = search.model_dump_json(include=set(parts)).encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _scan_state(notify_existing: bool, fingerprint: str, scanned: str | None) -> str | None:
    if not notify_existing:
        return None
    return "done" if scanned == fingerprint else "pending"


def saved_search_doc(
    search_id: str, body: SavedSearchIn, created: str, now: str, scanned: str | None = None
) -> SavedSearch:
    """The stored form of a saved search; `scanned`: the fingerprint whose existing matches
    were scanned already (kept across a replace that leaves the query alone)."""
    fingerprint = query_fingerprint(body.search)
    return SavedSearch(
        id=search_id,
        created=created,
        updated=now,
        fingerprint=fingerprint,
        existing_scan=_scan_state(body.notify_existing, fingerprint, scanned),
        **body.model_dump(),
    )


def index_source(
    search: SavedSearch, created_us: int, scanned: str | None = None
) -> dict[str, Any]:
    """The Elasticsearch `_source` of a saved search (`scanned_fingerprint`: see
    `saved_search_doc`)."""
    source = search.model_dump(mode="json", exclude_none=True, exclude={"existing_scan"})
    source["created_us"] = created_us
    if scanned is not None:
        source["scanned_fingerprint"] = scanned
    return source


def read_saved_search(source: dict[str, Any]) -> SavedSearch:
    """A saved search from its `_source`."""
    internal = ("created_us", "scanned_fingerprint")
    fields = {k: v for k, v in source.items() if k not in internal}
    fields["existing_scan"] = _scan_state(
        bool(source.get("notify_existing")),
        str(source.get("fingerprint", "")),
        source.get("scanned_fingerprint"),
    )
    return SavedSearch.model_validate(fields)


# -- visibility (refresh) --------------------------------------------------------------------
def visibility_body(ids: Sequence[str]) -> dict[str, Any]:
    """A search for the versions of `ids` that searches see now (after the last refresh)."""
    return {
        "query": {"ids": {"values": list(ids)}},
        "size": len(ids),
        "version": True,
        "_source": False,
        "track_total_hits": False,
    }


def not_visible(wanted: dict[str, int], resp: dict[str, Any]) -> set[str]:
    """The ids whose searchable version is older than the change (not refreshed yet)."""
    seen = {hit["_id"]: int(hit.get("_version", -1)) for hit in resp["hits"]["hits"]}
    return {doc_id for doc_id, version in wanted.items() if seen.get(doc_id, -1) < version}


# -- evaluation --------------------------------------------------------------------------------
def evaluation_query(search: SavedSearch) -> dict[str, Any]:
    """What the saved search matches (its facet selections as filters)."""
    req = search.search
    selection = [{"terms": {FACET_FIELDS[k]: v}} for k, v in sorted(req.selected.items())]
    return {"bool": {"filter": selection, "must": [base_query(req)]}}


def source_fields(search: SavedSearch) -> list[str]:
    """The `_source` fields an evaluation reads: the alert's fields and the identity (the
    artifact's id and version; a collection's latest artifact id)."""
    identity = {"id", "latest_id"} if search.search.latest_per_key else {"id", "version"}
    return sorted({*response_fields(search.search), *identity})


def evaluation_body(search: SavedSearch, ids: Sequence[str]) -> dict[str, Any]:
    """The saved search's query restricted to `ids` (artifact ids, or collection ids in
    latest_per_key mode)."""
    query = evaluation_query(search)
    query["bool"]["filter"] = [{"ids": {"values": list(ids)}}, *query["bool"]["filter"]]
    return {
        "query": query,
        "size": len(ids),
        "version": True,
        "_source": {"includes": source_fields(search)},
        "track_total_hits": False,
    }


def combined_body(searches: Sequence[SavedSearch], ids: Sequence[str]) -> dict[str, Any]:
    """One search that evaluates every saved search of `searches` on `ids` at once: the
    `ids` filter is looked up once, each saved search is a named clause (its position), and
    each hit tells which ones it matched (`matched_queries`, read by `split_combined`).
    Raises TranslationError if one of them cannot be translated."""
    clauses = []
    for n, search in enumerate(searches):
        query = evaluation_query(search)
        query["bool"]["_name"] = str(n)
        clauses.append(query)
    fields = sorted({f for search in searches for f in source_fields(search)})
    return {
        "query": {
            "bool": {
                "filter": [{"ids": {"values": list(ids)}}],
                "should": clauses,
                "minimum_should_match": 1,
            }
        },
        "size": len(ids),
        "sort": ["_doc"],
        "version": True,
        "_source": {"includes": fields},
        "track_total_hits": False,
    }


def split_combined(
    searches: Sequence[SavedSearch], resp: dict[str, Any]
) -> list[tuple[SavedSearch, dict[str, Any]]]:
    """The answer of a `combined_body` search as one answer per saved search (the hits
    that matched its named clause)."""
    hits = resp.get("hits", {}).get("hits", [])
    out = []
    for n, search in enumerate(searches):
        name = str(n)
        mine = [h for h in hits if name in h.get("matched_queries", ())]
        out.append((search, {"hits": {"hits": mine}}))
    return out


def latest_ids(search: SavedSearch, resp: dict[str, Any]) -> list[str]:
    """The latest artifact ids of the collections a latest_per_key evaluation matched (their
    versions are read from the artifact index: a collection does not carry it)."""
    if not search.search.latest_per_key:
        return []
    hits = resp.get("hits", {}).get("hits", [])
    return [str(h["_source"]["latest_id"]) for h in hits if h.get("_source", {}).get("latest_id")]


@dataclass(frozen=True, slots=True)
class Match:
    """An artifact a saved search matched, as the search saw it."""

    alert_id: str
    search_id: str
    artifact_id: str
    artifact_version: int
    document_version: int
    artifact: dict[str, Any]
    latest_per_key: bool = False


def alert_id(search_id: str, fingerprint: str, artifact_id: str, artifact_version: int) -> str:
    """The deterministic id of an alert: the same inputs always give the same id."""
    raw = f"{search_id}\x00{fingerprint}\x00{artifact_id}\x00{artifact_version}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def read_matches(
    search: SavedSearch, resp: dict[str, Any], versions: dict[str, int] | None = None
) -> list[Match]:
    """The matches of an evaluation answer, with the fields the saved search selects.

    In latest_per_key mode a match is the collection's latest artifact: its id is
    `latest_id` and its version comes from `versions` (artifact id -> version); a latest
    artifact whose version is unknown (deleted meanwhile) is no match."""
    keep = set(response_fields(search.search))
    latest = search.search.latest_per_key
    out = []
    for hit in resp.get("hits", {}).get("hits", []):
        source = hit.get("_source", {})
        if latest:
            artifact_id = str(source.get("latest_id", ""))
            if artifact_id not in (versions or {}):
                continue
            version = (versions or {})[artifact_id]
        else:
            artifact_id = str(source.get("id", hit["_id"]))
            version = int(source.get("version", 0))
        out.append(
            Match(
                alert_id=alert_id(search.id, search.fingerprint, artifact_id, version),
                search_id=search.id,
                artifact_id=artifact_id,
                artifact_version=version,
                document_version=int(hit.get("_version", 0)),
                artifact={k: v for k, v in source.items() if k in keep},
                latest_per_key=latest,
            )
        )
    return out


# -- alerts ------------------------------------------------------------------------------------
class SavedSearchRef(BaseModel):
    """The saved search an alert belongs to."""

    id: str
    name: str
    fingerprint: str


class AlertMessage(BaseModel):
    """An alert: an artifact version newly matching a saved search (the alert topic's value,
    and the body POSTed to the saved search's webhook)."""

    alert_id: str = Field(
        description="Deterministic: hash of (saved search id, fingerprint, artifact id, "
        "artifact version). Consumers can use it as an idempotency key."
    )
    saved_search: SavedSearchRef
    artifact_id: str
    artifact_version: int = Field(description="The artifact's event version (contract).")
    document_version: int = Field(
        description="The Elasticsearch document version the match was seen in (informative: "
        "it changes when a run's fields are propagated, the artifact version does not)."
    )
    matched_at: str = Field(description="When the worker saw the match (UTC, ISO 8601).")
    artifact: dict[str, Any] = Field(
        description="The artifact as Prefect's API returns it, limited to the saved "
        "search's `fields`; in latest_per_key mode the key's collection as "
        "`/api/artifacts/latest/filter` returns it (`artifact_id` = its `latest_id`)."
    )
    latest_per_key: bool = Field(
        False,
        description="The saved search is in latest_per_key mode: the artifact matched as "
        "the latest artifact of its key.",
    )


def alert_message(match: Match, search: SavedSearch, now: str) -> AlertMessage:
    """The message announcing one match."""
    return AlertMessage(
        alert_id=match.alert_id,
        saved_search=SavedSearchRef(id=search.id, name=search.name, fingerprint=search.fingerprint),
        artifact_id=match.artifact_id,
        artifact_version=match.artifact_version,
        document_version=match.document_version,
        matched_at=now,
        artifact=match.artifact,
        latest_per_key=match.latest_per_key,
    )


PENDING, PUBLISHED = "pending", "published"


def ledger_source(message: AlertMessage, claimed_us: int) -> dict[str, Any]:
    """The ledger document of a new alert: `pending` until Kafka acknowledged it."""
    return {
        "search_id": message.saved_search.id,
        "artifact_id": message.artifact_id,
        "artifact_version": message.artifact_version,
        "state": PENDING,
        "claimed_us": claimed_us,
        "message": message.model_dump(mode="json"),
    }


def is_abandoned(source: dict[str, Any], now_us: int, claim_timeout_us: int) -> bool:
    """Whether a ledger document is a claim whose publisher died: still `pending` after
    the claim timeout (another worker may take it over)."""
    return (
        source.get("state") == PENDING
        and int(source.get("claimed_us", 0)) <= now_us - claim_timeout_us
    )

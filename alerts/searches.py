"""Elasticsearch adapter: the saved searches (`<prefix>saved-searches`).

Writes use `refresh=wait_for`: once the API has answered, the alerts worker's next load
of the saved searches (a search) sees the change. Replacing a saved search is a
compare-and-set on the document's sequence number, so two concurrent updates cannot both
win silently (the loser gets a `SavedSearchConflictError`, HTTP 409).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch, ConflictError, TransportError
from pydantic import ValidationError

from alerts.model import (
    SavedSearch,
    SavedSearchIn,
    index_source,
    read_saved_search,
    saved_search_doc,
)
from services.documents import format_timestamp, to_micros
from services.errors import BackendUnavailableError, ServiceError

log = logging.getLogger("alerts.searches")

MAX_SAVED_SEARCHES = 10_000
"""How many saved searches are listed and evaluated (one page of Elasticsearch)."""

_ES_ERRORS = (ApiError, TransportError)


class SavedSearchConflictError(ServiceError):
    """The saved search changed between reading and replacing it (HTTP 409)."""


def _unavailable(exc: Exception) -> BackendUnavailableError:
    if isinstance(exc, ApiError):
        return BackendUnavailableError(
            f"Elasticsearch could not answer (HTTP {exc.status_code} {exc.error})."
        )
    return BackendUnavailableError(f"Elasticsearch is unavailable: {type(exc).__name__}")


def _missing_index(resp: Any) -> bool:
    return isinstance(resp, dict) and "error" in resp


class SavedSearchStore:
    """Create, read, list, replace and delete saved searches."""

    def __init__(self, es: AsyncElasticsearch, index: str) -> None:
        self.es = es
        self.index = index

    async def create(self, body: SavedSearchIn) -> SavedSearch:
        """Store a new saved search under a fresh id."""
        now = datetime.now(UTC)
        stamp = format_timestamp(now)
        search = saved_search_doc(str(uuid.uuid4()), body, stamp, stamp)
        try:
            await self.es.index(
                index=self.index,
                id=search.id,
                document=index_source(search, to_micros(now)),
                op_type="create",
                refresh="wait_for",
            )
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        return search

    async def _read(self, search_id: str) -> tuple[SavedSearch, dict[str, Any]] | None:
        try:
            resp = await self.es.options(ignore_status=404).get(index=self.index, id=search_id)
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        if _missing_index(resp.body):
            raise BackendUnavailableError(
                "Elasticsearch is reachable but the saved-search index does not exist."
            )
        if not resp.get("found"):
            return None
        return read_saved_search(resp["_source"]), resp.body

    async def get(self, search_id: str) -> SavedSearch | None:
        """One saved search, or None."""
        found = await self._read(search_id)
        return None if found is None else found[0]

    async def replace(self, search_id: str, body: SavedSearchIn) -> SavedSearch | None:
        """Replace a saved search (keeping its id and creation time), or None if unknown."""
        found = await self._read(search_id)
        if found is None:
            return None
        old, raw = found
        now = datetime.now(UTC)
        scanned = raw["_source"].get("scanned_fingerprint")
        search = saved_search_doc(search_id, body, old.created, format_timestamp(now), scanned)
        try:
            await self.es.index(
                index=self.index,
                id=search_id,
                document=index_source(search, int(raw["_source"].get("created_us", 0)), scanned),
                if_seq_no=raw["_seq_no"],
                if_primary_term=raw["_primary_term"],
                refresh="wait_for",
            )
        except ConflictError as exc:
            raise SavedSearchConflictError(
                "The saved search changed meanwhile: read it again and retry."
            ) from exc
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        return search

    async def delete(self, search_id: str) -> bool:
        """Delete a saved search; False if it did not exist."""
        try:
            resp = await self.es.options(ignore_status=404).delete(
                index=self.index, id=search_id, refresh="wait_for"
            )
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        if _missing_index(resp.body):
            raise BackendUnavailableError(
                "Elasticsearch is reachable but the saved-search index does not exist."
            )
        return bool(resp.get("result") == "deleted")

    async def all(self) -> list[SavedSearch]:
        """Every saved search (at most `MAX_SAVED_SEARCHES`), oldest first."""
        try:
            resp = await self.es.search(
                index=self.index,
                query={"match_all": {}},
                sort=[{"created_us": "asc"}, {"id": "asc"}],
                size=MAX_SAVED_SEARCHES,
                track_total_hits=False,
            )
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        out = []
        for hit in resp["hits"]["hits"]:
            try:
                out.append(read_saved_search(hit["_source"]))
            except ValidationError as exc:  # stored by an older release whose model differed
                log.error("saved search %s is no longer valid, skipped: %s", hit["_id"], exc)
        return out

    async def mark_scanned(self, search_id: str, fingerprint: str) -> bool:
        """Record that the existing matches of `fingerprint` were alerted; False when the
        saved search was deleted or its query replaced meanwhile (scan again)."""
        found = await self._read(search_id)
        if found is None or found[0].fingerprint != fingerprint:
            return False
        raw = found[1]
        try:
            await self.es.update(
                index=self.index,
                id=search_id,
                doc={"scanned_fingerprint": fingerprint},
                if_seq_no=raw["_seq_no"],
                if_primary_term=raw["_primary_term"],
                refresh="wait_for",
            )
        except ConflictError:
            return False
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        return True

    async def ids(self) -> list[str]:
        """The ids of every stored saved search (at most `MAX_SAVED_SEARCHES`), readable by
        this release or not: what the ledger prune must not treat as deleted."""
        try:
            resp = await self.es.search(
                index=self.index,
                query={"match_all": {}},
                size=MAX_SAVED_SEARCHES,
                source=False,
                track_total_hits=False,
            )
        except _ES_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [hit["_id"] for hit in resp["hits"]["hits"]]

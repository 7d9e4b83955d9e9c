"""The saved-search routes of the extension API: `/ext/v1/saved-searches` (docs/search.md).

Create, list, read, replace and delete saved searches. A saved search holds the body of a
`POST /ext/v1/artifacts/search` request, validated by the same model and then *run once*
(no hits asked) so that a query Elasticsearch cannot parse is a 422 now, not an error in
the alerts worker later. Errors: an invalid body is FastAPI's 422 list; a search a saved
search cannot hold, one Elasticsearch refuses, or a webhook whose host
`ALERTS_WEBHOOK_ALLOWED_HOSTS` does not allow, a 422 with a sentence; an unknown or
malformed id a 404; a concurrent replace a 409; Elasticsearch unavailable a 503.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from elasticsearch import ApiError, TransportError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from alerts.egress import AllowedHosts, parse_allowed_hosts, webhook_refusal
from alerts.ledger import Ledger, LedgerError
from alerts.model import SavedSearch, SavedSearchIn, SavedSearchList, check_saved_search
from alerts.searches import SavedSearchConflictError, SavedSearchStore
from query.app import AppParts
from query.repository import Repository
from services.errors import BackendUnavailableError, TranslationError

log = logging.getLogger("alerts.routes")

PREFIX = "/ext/v1/saved-searches"

_NOT_FOUND = {"description": "No saved search has this id."}
_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid body, or a search that cannot be saved or run."},
    503: {"description": "Elasticsearch is unavailable."},
}


def _detail(status: int, detail: str) -> Response:
    return Response(orjson.dumps({"detail": detail}), status, media_type="application/json")


def _json(model: SavedSearch | SavedSearchList, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status, media_type="application/json")


def _valid_id(search_id: str) -> bool:
    try:
        return str(uuid.UUID(search_id)) == search_id
    except ValueError:
        return False


def saved_search_router(
    store: SavedSearchStore,
    ledger: Ledger,
    repo: Repository,
    body_within_limit: Callable[[Request], Awaitable[None]],
    webhook_hosts: AllowedHosts,
) -> APIRouter:
    """The routes, over a saved-search store, the alert ledger (purged on delete), the
    search repository (to try a search) and the hosts webhooks may be sent to."""
    router = APIRouter(prefix=PREFIX, tags=["saved searches"])

    async def checked(body: SavedSearchIn) -> Response | None:
        """None when the search can be saved, else the 422."""
        if body.webhook is not None:
            refused = webhook_refusal(str(body.webhook.url), webhook_hosts)
            if refused is not None:
                return _detail(422, refused)
        try:
            check_saved_search(body)
            probe = body.search.model_copy(
                update={"limit": 0, "facets": [], "track_total": False, "highlight": False}
            )
            await repo.extension_search(probe)
        except TranslationError as exc:
            return _detail(422, str(exc))
        return None

    async def guarded(call: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await call()
        except BackendUnavailableError as exc:
            return _detail(503, str(exc))
        except SavedSearchConflictError as exc:
            return _detail(409, str(exc))

    @router.post(
        "",
        status_code=201,
        response_model=SavedSearch,
        summary="Save a search (and optionally a webhook for its alerts)",
        dependencies=[Depends(body_within_limit)],
        responses=_ERRORS,
    )
    async def create(body: SavedSearchIn) -> Response:
        """Every artifact version that newly matches the search from now on is an alert
        (docs/search.md, "Saved searches and alerts")."""

        async def run() -> Response:
            refused = await checked(body)
            if refused is not None:
                return refused
            return _json(await store.create(body), 201)

        return await guarded(run)

    @router.get(
        "",
        response_model=SavedSearchList,
        summary="List the saved searches",
        responses={503: _ERRORS[503]},
    )
    async def list_all() -> Response:
        """Every saved search, oldest first (at most 10,000)."""

        async def run() -> Response:
            return _json(SavedSearchList(saved_searches=await store.all()))

        return await guarded(run)

    @router.get(
        "/{search_id}",
        response_model=SavedSearch,
        summary="Read a saved search",
        responses={404: _NOT_FOUND, 503: _ERRORS[503]},
    )
    async def read(search_id: str) -> Response:
        """One saved search."""

        async def run() -> Response:
            found = await store.get(search_id) if _valid_id(search_id) else None
            return _json(found) if found else _detail(404, "Saved search not found.")

        return await guarded(run)

    @router.put(
        "/{search_id}",
        response_model=SavedSearch,
        summary="Replace a saved search",
        dependencies=[Depends(body_within_limit)],
        responses={
            404: _NOT_FOUND,
            409: {"description": "Changed concurrently: read it again and retry."},
            **_ERRORS,
        },
    )
    async def replace(search_id: str, body: SavedSearchIn) -> Response:
        """Replace name, description, search and webhook. When the matching parts of the
        search change (its fingerprint), artifacts alert again under the new query."""

        async def run() -> Response:
            if not _valid_id(search_id):
                return _detail(404, "Saved search not found.")
            refused = await checked(body)
            if refused is not None:
                return refused
            found = await store.replace(search_id, body)
            return _json(found) if found else _detail(404, "Saved search not found.")

        return await guarded(run)

    @router.delete(
        "/{search_id}",
        status_code=204,
        summary="Delete a saved search",
        responses={404: _NOT_FOUND, 503: _ERRORS[503]},
    )
    async def delete(search_id: str) -> Response:
        """Delete a saved search: it raises no more alerts, and its ledger entries are
        deleted (what the API could not delete, the alerts worker's prune does)."""

        async def run() -> Response:
            if not (_valid_id(search_id) and await store.delete(search_id)):
                return _detail(404, "Saved search not found.")
            try:
                await ledger.delete_search(search_id)
            except (ApiError, TransportError, LedgerError) as exc:
                log.warning(
                    "ledger entries of deleted saved search %s left to the worker's prune: %r",
                    search_id,
                    exc,
                )
            return Response(status_code=204)

        return await guarded(run)

    return router


def saved_search_extension(parts: AppParts) -> APIRouter:
    """The saved-search routes over the API's own client and index names (an extension of
    `query.app.create_app`, added by the composition root)."""
    return saved_search_router(
        SavedSearchStore(parts.es, parts.names.saved_searches),
        Ledger(parts.es, parts.names.alert_ledger),
        parts.repository,
        parts.body_within_limit,
        parse_allowed_hosts(parts.settings.webhook_allowed_hosts),
    )

"""The query API as it is deployed: `query.app.create_app` with the saved-search routes of
`alerts/routes.py` (the query package cannot import alerts, which is built on it)."""

from __future__ import annotations

from fastapi import FastAPI

from alerts.routes import saved_search_extension
from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings


def create_api(query: QuerySettings, es_settings: ElasticsearchSettings) -> FastAPI:
    """The whole API: Prefect's routes, the search extension and saved searches."""
    return create_app(query, es_settings, extensions=[saved_search_extension])

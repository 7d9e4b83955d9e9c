"""Build the one async Elasticsearch client of a process from settings."""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch

from services.config import ElasticsearchSettings


def make_es_client(settings: ElasticsearchSettings) -> AsyncElasticsearch:
    """A pooled client; credentials come from SecretStr settings and are never logged."""
    kwargs: dict[str, Any] = {
        "request_timeout": settings.request_timeout_s,
        "max_retries": 0,
        "retry_on_timeout": False,
    }
    if settings.ca_certs:
        kwargs["ca_certs"] = settings.ca_certs
    if settings.api_key is not None:
        kwargs["api_key"] = settings.api_key.get_secret_value()
    elif settings.username and settings.password is not None:
        kwargs["basic_auth"] = (settings.username, settings.password.get_secret_value())
    return AsyncElasticsearch(settings.url, **kwargs)

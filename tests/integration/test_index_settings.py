"""`ensure_indices` on the real Elasticsearch: the periodic refresh of the documents'
indices (ADR 0013) is set where it belongs, on new and existing indices alike."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from elasticsearch import AsyncElasticsearch

from services.config import ElasticsearchSettings
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames


@pytest.fixture
async def es(elasticsearch_url: str) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(elasticsearch_url)
    try:
        yield client
    finally:
        await client.close()


async def _intervals(es: AsyncElasticsearch, names: IndexNames) -> dict[str, str]:
    aliases = [*names.all_aliases(), *names.alerting_indices()]
    out = {}
    for alias in aliases:
        got = await es.indices.get_settings(index=alias, name="index.refresh_interval")
        ((_, body),) = got.body.items()
        out[alias.removeprefix(names.prefix)] = body["settings"]["index"]["refresh_interval"]
    return out


async def test_the_documents_indices_get_the_configured_refresh_interval(
    es: AsyncElasticsearch, unique_name: str
) -> None:
    names = IndexNames(f"{unique_name}-")
    try:
        assert ElasticsearchSettings().refresh_interval == "30s"  # the default
        await ensure_indices(es, names, refresh_interval="30s")
        assert await _intervals(es, names) == {
            "artifacts": "30s",
            "collections": "30s",
            "control": "1s",  # read with realtime gets; never searched
            "saved-searches": "1s",  # written with refresh=wait_for: must stay short
            "alert-ledger": "1s",
        }
        # an existing deployment started with another interval: applied to what exists
        assert await ensure_indices(es, names, refresh_interval="5s") == []
        assert (await _intervals(es, names))["artifacts"] == "5s"
        assert (await _intervals(es, names))["collections"] == "5s"
        # callers that do not say leave it alone
        await ensure_indices(es, names)
        assert (await _intervals(es, names))["artifacts"] == "5s"
    finally:
        await drop_indices(es, names)


async def test_without_an_interval_new_indices_refresh_every_second(
    es: AsyncElasticsearch, unique_name: str
) -> None:
    names = IndexNames(f"{unique_name}-")
    try:
        await ensure_indices(es, names)
        assert set((await _intervals(es, names)).values()) == {"1s"}
    finally:
        await drop_indices(es, names)


def test_a_malformed_interval_is_refused_at_startup() -> None:
    for bad in ("30", "s", "0s", "-2", "30 s", "1d"):
        with pytest.raises(ValueError):
            ElasticsearchSettings(refresh_interval=bad)
    for good in ("-1", "250ms", "1s", "30s", "5m"):
        assert ElasticsearchSettings(refresh_interval=good).refresh_interval == good

"""`ensure_indices` on the real Elasticsearch: the periodic refresh of the documents'
indices (ADR 0013) is set where it belongs, on new and existing indices alike; indices of
another release gain the fields they lack and keep working."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator

import pytest
from elasticsearch import AsyncElasticsearch

from services.config import ElasticsearchSettings
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import (
    ARTIFACTS_MAPPING,
    IndexNames,
    index_settings,
    mapping_additions,
)


@pytest.fixture
async def es(elasticsearch_url: str) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(elasticsearch_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def names(es: AsyncElasticsearch, unique_name: str) -> AsyncIterator[IndexNames]:
    """A fresh prefix; every index under it is deleted afterwards."""
    names = IndexNames(f"{unique_name}-")
    try:
        yield names
    finally:
        await drop_indices(es, names)


async def _intervals(es: AsyncElasticsearch, names: IndexNames) -> dict[str, str]:
    aliases = [*names.all_aliases(), *names.alerting_indices()]
    out = {}
    for alias in aliases:
        got = await es.indices.get_settings(index=alias, name="index.refresh_interval")
        ((_, body),) = got.body.items()
        out[alias.removeprefix(names.prefix)] = body["settings"]["index"]["refresh_interval"]
    return out


async def test_the_documents_indices_get_the_configured_refresh_interval(
    es: AsyncElasticsearch, names: IndexNames
) -> None:
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


async def test_without_an_interval_new_indices_refresh_every_second(
    es: AsyncElasticsearch, names: IndexNames
) -> None:
    await ensure_indices(es, names)
    assert set((await _intervals(es, names)).values()) == {"1s"}


def test_a_malformed_interval_is_refused_at_startup() -> None:
    for bad in ("30", "s", "0s", "-2", "30 s", "1d"):
        with pytest.raises(ValueError):
            ElasticsearchSettings(refresh_interval=bad)
    for good in ("-1", "250ms", "1s", "30s", "5m"):
        assert ElasticsearchSettings(refresh_interval=good).refresh_interval == good


async def _live_properties(es: AsyncElasticsearch, alias: str) -> dict[str, object]:
    got = await es.indices.get_mapping(index=alias)
    ((_, body),) = got.body.items()
    props: dict[str, object] = body["mappings"]["properties"]
    return props


async def test_fresh_indices_have_exactly_this_schema(
    es: AsyncElasticsearch, names: IndexNames
) -> None:
    await ensure_indices(es, names)
    for alias in names.all_aliases():
        live = await _live_properties(es, alias)
        # what Elasticsearch reports back reads as the mapping asked for: nothing to add,
        # nothing differing (else every start would warn about its own indices)
        assert mapping_additions(live, names.mapping_for(alias)["properties"]) == ({}, [])


async def test_an_index_defined_otherwise_gains_what_it_lacks_and_keeps_the_rest(
    es: AsyncElasticsearch, names: IndexNames, caplog: pytest.LogCaptureFixture
) -> None:
    """An index made by another release: its text fields index phrases (which
    Elasticsearch cannot change on a live field) and it lacks `updated_us`. The indexer
    must still start on it, add the missing field, and name the others with `replay`."""
    old = copy.deepcopy(ARTIFACTS_MAPPING)
    old["properties"]["x"]["properties"] = {
        f: {"type": "text", "index_phrases": True} for f in old["properties"]["x"]["properties"]
    }
    del old["properties"]["updated_us"]
    concrete = names.concrete(names.artifacts, 2)
    await es.indices.create(
        index=concrete,
        settings=index_settings(1, 0, old),
        mappings=old,
        aliases={names.artifacts: {"is_write_index": True}},
    )
    with caplog.at_level(logging.WARNING, logger="services.es.admin"):
        created = await ensure_indices(es, names)
    assert concrete not in created and names.concrete(names.artifacts) not in created
    live = await _live_properties(es, names.artifacts)
    assert live["updated_us"] == {"type": "long"}
    x = live["x"]
    assert isinstance(x, dict)
    assert all(p.get("index_phrases") is True for p in x["properties"].values())
    warned = [r.getMessage() for r in caplog.records if concrete in r.getMessage()]
    assert len(warned) == 1
    assert "x.key, x.description, x.data, x.metadata" in warned[0]
    assert "replay" in warned[0]
    # and a document with every field of this release is accepted by the old index
    await es.index(
        index=names.artifacts,
        id="a",
        document={"id": "a", "updated_us": 1, "x": {"key": "week over week"}},
        refresh=True,
    )
    hits = await es.search(
        index=names.artifacts, query={"match_phrase": {"x.key": "week over week"}}
    )
    assert hits["hits"]["total"]["value"] == 1

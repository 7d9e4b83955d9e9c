"""Pruning the alert ledger on the real Elasticsearch, which has no `_delete_by_query`:
a deleted saved search's entries go at once, and the worker's prune removes entries of
searches that no longer exist and published entries older than the retention — across
several pages of the point-in-time walk, leaving everything else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from alerts.evaluator import Evaluator
from alerts.ledger import DELETE_PAGE, Ledger
from alerts.model import SavedSearchIn, index_source, saved_search_doc
from alerts.searches import SavedSearchStore
from alerts.worker import AlertWorker
from query.extension import SearchRequest
from services.config import AlertsSettings, KafkaSettings
from services.documents import to_micros
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames

DAY_US = 86_400 * 1_000_000


@pytest.fixture
async def es(elasticsearch_url: str, unique_name: str) -> AsyncIterator[tuple[Any, IndexNames]]:
    client = AsyncElasticsearch(elasticsearch_url)
    names = IndexNames(f"{unique_name}-")
    await ensure_indices(client, names)
    try:
        yield client, names
    finally:
        await drop_indices(client, names)
        await client.close()


async def _write(es: Any, index: str, rows: list[tuple[str, str, str, int]]) -> None:
    """Ledger entries (alert id, search id, state, claimed_us)."""
    operations: list[dict[str, Any]] = []
    for alert_id, search_id, state, claimed_us in rows:
        operations.append({"index": {"_index": index, "_id": alert_id}})
        operations.append(
            {"search_id": search_id, "state": state, "claimed_us": claimed_us, "message": {}}
        )
    resp = await es.bulk(operations=operations, refresh=True)
    assert not resp["errors"]


async def _ids(es: Any, index: str) -> set[str]:
    await es.indices.refresh(index=index)
    resp = await es.search(index=index, size=10_000, source=False)
    return {h["_id"] for h in resp["hits"]["hits"]}


async def test_delete_search_walks_every_page(es: tuple[Any, IndexNames]) -> None:
    client, names = es
    many = DELETE_PAGE * 2 + 17
    rows = [(f"gone-{i}", "search-gone", "published", i) for i in range(many)]
    rows += [(f"kept-{i}", "search-kept", "published", i) for i in range(5)]
    await _write(client, names.alert_ledger, rows)
    ledger = Ledger(client, names.alert_ledger)
    assert await ledger.delete_search("search-gone") == many
    assert await _ids(client, names.alert_ledger) == {f"kept-{i}" for i in range(5)}
    assert await ledger.delete_search("search-gone") == 0


async def test_worker_prunes_orphans_and_old_published_entries(
    es: tuple[Any, IndexNames],
) -> None:
    client, names = es
    now = to_micros(datetime.now(UTC))
    old, recent = now - 40 * DAY_US, now - DAY_US
    await _write(
        client,
        names.alert_ledger,
        [
            ("live-old-published", "live", "published", old),
            ("live-old-pending", "live", "pending", old),  # still owed: kept
            ("live-recent", "live", "published", recent),
            ("orphan-old", "deleted", "published", recent),
            ("orphan-new", "just-created", "pending", now + 60 * 1_000_000),
            ("stale-old", "stale", "pending", old),
        ],
    )
    live = saved_search_doc("live", SavedSearchIn(name="live", search=SearchRequest()), "t", "t")
    await client.index(index=names.saved_searches, id="live", document=index_source(live, 1))
    # a saved search this release cannot read (an older one wrote it): not deleted either
    await client.index(index=names.saved_searches, id="stale", document={"id": "stale"})
    await client.indices.refresh(index=names.saved_searches)
    store = SavedSearchStore(client, names.saved_searches)
    assert [s.id for s in await store.all()] == ["live"]
    settings = AlertsSettings(ledger_retention_days=30, metrics_port=0)
    worker = AlertWorker(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),  # never started: prune needs no Kafka
        settings,
        Evaluator(client, names.artifacts, names.collections, 1.0),
        store,
        Ledger(client, names.alert_ledger),
    )
    assert await worker.prune() == 2
    assert await _ids(client, names.alert_ledger) == {
        "live-old-pending",
        "live-recent",
        "orphan-new",  # claimed after the list of searches was read: not an orphan yet
        "stale-old",
    }
    kept_for_ever = AlertsSettings(ledger_retention_days=0, metrics_port=0)
    worker.settings = kept_for_ever
    assert await worker.prune() == 0

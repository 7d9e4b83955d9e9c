"""Removing what one test created on the shared servers: its topics and its indices."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch


async def drop_test_names(kafka_bootstrap: str, elasticsearch_url: str, name: str) -> None:
    """Delete the topics prefixed `name.` and the indices prefixed `name-`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"{name}.")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
    es = AsyncElasticsearch(elasticsearch_url)
    with contextlib.suppress(Exception):  # nothing created, or already gone
        resp = await es.indices.get(index=f"{name}-*", allow_no_indices=True)
        if resp.body:
            await es.indices.delete(index=",".join(resp.body))
    await es.close()

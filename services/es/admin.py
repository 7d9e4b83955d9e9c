"""Create indices behind aliases, idempotently (used by bootstrap, tests and replay)."""

from __future__ import annotations

import logging
from typing import Any

from elasticsearch import AsyncElasticsearch, BadRequestError

from services.es.indices import (
    MAX_RESULT_WINDOW,
    IndexNames,
    index_settings,
    is_document_mapping,
    mapping_additions,
)

log = logging.getLogger(__name__)


async def ensure_indices(
    es: AsyncElasticsearch,
    names: IndexNames,
    shards: int = 1,
    replicas: int = 0,
    refresh_interval: str | None = None,
) -> list[str]:
    """Create each alias's concrete index if the alias does not exist; return what was created.

    Without write targets (every caller but replay) the alerting indices (saved searches and
    the alert ledger) are ensured too. `refresh_interval` (`ELASTICSEARCH_REFRESH_INTERVAL`,
    ADR 0013) is set on the artifact and collection indices, existing ones included; None
    leaves existing ones alone and creates them with Elasticsearch's usual 1 s.
    """
    wanted = {alias: names.mapping_for(alias) for alias in names.all_aliases()}
    if names.write_targets is None:
        wanted.update(names.alerting_indices())
    created = []
    for alias, mapping in wanted.items():
        index = await _ensure(es, names, alias, mapping, shards, replicas, refresh_interval)
        if index is not None:
            created.append(index)
    return created


async def _ensure(
    es: AsyncElasticsearch,
    names: IndexNames,
    alias: str,
    mapping: dict[str, Any],
    shards: int,
    replicas: int,
    refresh_interval: str | None,
) -> str | None:
    if await es.indices.exists_alias(name=alias):
        # indices made by an earlier release may have a smaller window (dynamic) and
        # lack fields added since (additive: Elasticsearch refuses any other change)
        dynamic: dict[str, Any] = {"max_result_window": MAX_RESULT_WINDOW}
        if refresh_interval is not None and is_document_mapping(mapping):
            dynamic["refresh_interval"] = refresh_interval
        await es.indices.put_settings(index=alias, settings={"index": dynamic})
        live = await es.indices.get_mapping(index=alias)
        for index, body in live.body.items():
            have = body.get("mappings", {}).get("properties", {})
            additions, differing = mapping_additions(have, mapping["properties"])
            if additions:
                await es.indices.put_mapping(index=index, properties=additions)
            if differing:
                log.warning(
                    "index %s was made by another release (fields %s differ from schema "
                    "version %d); it keeps working, `replay` rebuilds it with this one",
                    index,
                    ", ".join(differing),
                    names.version,
                )
        return None
    index = names.concrete(alias)
    try:
        await es.indices.create(
            index=index,
            settings=index_settings(shards, replicas, mapping, refresh_interval or "1s"),
            mappings=mapping,
            aliases={alias: {"is_write_index": True}},
        )
        return index
    except BadRequestError as exc:
        if exc.error != "resource_already_exists_exception":
            raise
    return None


async def drop_indices(es: AsyncElasticsearch, names: IndexNames) -> None:
    """Delete every index of this prefix (tests and `make reset`)."""
    await es.indices.delete(
        index=f"{names.prefix}*", ignore_unavailable=True, allow_no_indices=True
    )

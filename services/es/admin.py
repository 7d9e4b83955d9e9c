"""Create indices behind aliases, idempotently (used by bootstrap, tests and replay)."""

from __future__ import annotations

from elasticsearch import AsyncElasticsearch, BadRequestError

from services.es.indices import MAX_RESULT_WINDOW, IndexNames, index_settings


async def ensure_indices(
    es: AsyncElasticsearch, names: IndexNames, shards: int = 1, replicas: int = 0
) -> list[str]:
    """Create each alias's concrete index if the alias does not exist; return what was created."""
    created = []
    for alias in names.all_aliases():
        if await es.indices.exists_alias(name=alias):
            # indices made by an earlier release may have a smaller window (dynamic) and
            # lack fields added since (additive: Elasticsearch refuses any other change)
            await es.indices.put_settings(
                index=alias, settings={"index": {"max_result_window": MAX_RESULT_WINDOW}}
            )
            await es.indices.put_mapping(
                index=alias, properties=names.mapping_for(alias)["properties"]
            )
            continue
        index = names.concrete(alias)
        try:
            await es.indices.create(
                index=index,
                settings=index_settings(shards, replicas, names.mapping_for(alias)),
                mappings=names.mapping_for(alias),
                aliases={alias: {"is_write_index": True}},
            )
            created.append(index)
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise
    return created


async def drop_indices(es: AsyncElasticsearch, names: IndexNames) -> None:
    """Delete every index of this prefix (tests and `make reset`)."""
    await es.indices.delete(
        index=f"{names.prefix}*", ignore_unavailable=True, allow_no_indices=True
    )

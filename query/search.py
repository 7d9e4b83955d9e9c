"""Assemble complete Elasticsearch request bodies from translated parts.

A list request is query + sort + window + the response fields Prefect returns;
a count request is only the query (sent to ``_count``, which is exact). Total hit
tracking is switched off for lists: Prefect's list endpoints return no total.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from typing import Any

from query.sort import SortClause
from query.translate import Query
from services.documents import ARTIFACT_RESPONSE_FIELDS, COLLECTION_RESPONSE_FIELDS

ARTIFACT_SOURCE_FIELDS: tuple[str, ...] = ARTIFACT_RESPONSE_FIELDS
"""The fields of Prefect's ``Artifact`` response, read from ``_source``."""

COLLECTION_SOURCE_FIELDS: tuple[str, ...] = COLLECTION_RESPONSE_FIELDS
"""The fields of Prefect's ``ArtifactCollection`` response, read from ``_source``."""


def source_fields(collection: bool) -> tuple[str, ...]:
    """The response fields for the artifact or the collection index."""
    return COLLECTION_SOURCE_FIELDS if collection else ARTIFACT_SOURCE_FIELDS


def build_search_body(
    query: Query,
    sort: Sequence[SortClause],
    *,
    collection: bool,
    size: int,
    from_: int | None = None,
    search_after: Sequence[Any] | None = None,
    with_source: bool = True,
) -> dict[str, Any]:
    """A ``_search`` body.

    Give ``from_`` for a ``from``/``size`` page or ``search_after`` (the previous
    page's last ``sort`` values) for a walk step, not both. ``with_source=False``
    suits the pages a ``search_after`` walk only skips over.
    """
    if from_ is not None and search_after is not None:
        raise ValueError("from_ and search_after are mutually exclusive")
    body: dict[str, Any] = {
        "query": query,
        "sort": deepcopy(list(sort)),
        "size": size,
        "track_total_hits": False,
        "_source": {"includes": list(source_fields(collection))} if with_source else False,
    }
    if not with_source:
        # skipped hits need only their sort values: no stored fields, no `_id` loading
        body["stored_fields"] = "_none_"
    if from_ is not None:
        body["from"] = from_
    if search_after is not None:
        body["search_after"] = list(search_after)
    return body


def build_count_body(query: Query) -> dict[str, Any]:
    """A ``_count`` body for the same query."""
    return {"query": query}

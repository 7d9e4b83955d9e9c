"""Elasticsearch sort clauses for Prefect's artifact and collection sort orders.

Prefect sorts on a single column (``ORDER BY created DESC`` and so on) and leaves
the order of ties to PostgreSQL, which may differ from one execution to the next.
Here every order ends with the unique ``id`` so that a total order exists: pages
fetched with ``from``/``size`` or ``search_after`` never overlap or skip a hit.
The tie-breaker is ``id`` *descending*, the direction of the default sort
(``ID_DESC``), so a tie is broken the same way whichever order was asked for.

NULL placement follows PostgreSQL's defaults: ``DESC`` puts NULLs first, ``ASC``
puts them last. Only ``key`` can be NULL (artifacts without a key).
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from services.prefect.sorting import ArtifactCollectionSort, ArtifactSort

SortClause = dict[str, Any]
"""One entry of an Elasticsearch ``sort`` array."""

ID_DESC: list[SortClause] = [{"id_hi": {"order": "desc"}}, {"id_lo": {"order": "desc"}}]
"""``id`` descending, as its two numeric halves (``services.documents.id_order``)."""

_PRIMARY: dict[str, SortClause] = {
    "CREATED_DESC": {"created_us": {"order": "desc"}},
    "UPDATED_DESC": {"updated_us": {"order": "desc"}},
    "KEY_DESC": {"key": {"order": "desc", "missing": "_first"}},
    "KEY_ASC": {"key": {"order": "asc", "missing": "_last"}},
}


def sort_clauses(sort: ArtifactSort | ArtifactCollectionSort, collection: bool) -> list[SortClause]:
    """The ``sort`` array for one of Prefect's sort values.

    ``collection`` selects the collection index; both indices use the same field
    names (``created_us``, ``updated_us``, ``id``, ``key``), so the clauses are the
    same, but callers pass it so a future divergence stays local to this module.
    """
    del collection  # same field names on both indices today
    if sort.value == "ID_DESC":
        return deepcopy(ID_DESC)
    return deepcopy([_PRIMARY[sort.value], *ID_DESC])

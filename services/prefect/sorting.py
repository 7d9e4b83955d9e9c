"""The sort orders Prefect 3.9.1 offers on the artifact list endpoints.

Values are identical to Prefect's so that a client's ``"sort"`` validates as is;
``query.sort`` turns them into Elasticsearch sort clauses.
"""

from __future__ import annotations

from enum import StrEnum


class ArtifactSort(StrEnum):
    """Orders accepted by ``POST /api/artifacts/filter``."""

    CREATED_DESC = "CREATED_DESC"
    UPDATED_DESC = "UPDATED_DESC"
    ID_DESC = "ID_DESC"
    KEY_DESC = "KEY_DESC"
    KEY_ASC = "KEY_ASC"


class ArtifactCollectionSort(StrEnum):
    """Orders accepted by ``POST /api/artifacts/latest/filter``."""

    CREATED_DESC = "CREATED_DESC"
    UPDATED_DESC = "UPDATED_DESC"
    ID_DESC = "ID_DESC"
    KEY_DESC = "KEY_DESC"
    KEY_ASC = "KEY_ASC"

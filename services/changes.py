"""PURE: the indexer's change feed — which artifact documents it wrote, at which versions.

With `INDEXER_PUBLISH_CHANGES=true` the indexer publishes, after Elasticsearch accepted a
step's documents and before the step is committed, one or more records to
`KAFKA_TOPIC_CHANGES` listing the artifact documents written and their external
versions. A crash before the commit re-applies the step, which writes and publishes
again: the feed is at-least-once, and its readers (the alerts worker) are idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from pydantic import BaseModel, Field

CHANGES_PER_RECORD = 500
"""Artifact ids per change-feed record (a record stays far below Kafka's 1 MB default)."""


class ChangeRecord(BaseModel):
    """The value of a change-feed record: artifact documents the indexer wrote."""

    a: list[tuple[str, int]] = Field(
        description="[artifact id, Elasticsearch document version] pairs, written and "
        "acknowledged by Elasticsearch before this record was published"
    )


def encode_changes(
    pairs: Iterable[tuple[str, int]], per_record: int = CHANGES_PER_RECORD
) -> list[bytes]:
    """Change-feed record values for (artifact id, document version) pairs."""
    items = list(pairs)
    return [
        orjson.dumps({"a": items[i : i + per_record]}) for i in range(0, len(items), per_record)
    ]


class BadChangeRecordError(ValueError):
    """A change-feed record that is not a `ChangeRecord` (skipped and counted)."""


def decode_changes(value: bytes | None) -> list[tuple[str, int]]:
    """The pairs of one change-feed record."""
    try:
        raw = orjson.loads(value or b"")
        pairs = raw["a"]
        out = [(str(i), int(v)) for i, v in pairs]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadChangeRecordError(f"not a change record: {exc}") from exc
    return out


def merge_changes(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The highest document version of each changed artifact."""
    out: dict[str, int] = {}
    for doc_id, version in pairs:
        if version > out.get(doc_id, -1):
            out[doc_id] = version
    return out

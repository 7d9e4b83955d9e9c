"""PURE: the indexer's change feed — which artifact and collection documents it wrote, at
which versions.

With `INDEXER_PUBLISH_CHANGES=true` the indexer publishes, after Elasticsearch accepted a
step's documents and before the step is committed, one or more records to
`KAFKA_TOPIC_CHANGES` listing the artifact documents (`a`) and collection documents (`c`,
a key's latest artifact; for saved searches in latest_per_key mode) written and their
external versions. A crash before the commit re-applies the step, which writes and publishes
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
    c: list[tuple[str, int]] = Field(
        default_factory=list,
        description="[collection id, Elasticsearch document version] pairs of the collection "
        "documents (latest artifact per key) written likewise; absent in records of "
        "releases before it",
    )


def encode_changes(
    pairs: Iterable[tuple[str, int]],
    collections: Iterable[tuple[str, int]] = (),
    per_record: int = CHANGES_PER_RECORD,
) -> list[bytes]:
    """Change-feed record values: artifact pairs, then collection pairs, `per_record` ids
    per record."""
    items = list(pairs)
    out = [orjson.dumps({"a": items[i : i + per_record]}) for i in range(0, len(items), per_record)]
    more = list(collections)
    out += [
        orjson.dumps({"a": [], "c": more[i : i + per_record]})
        for i in range(0, len(more), per_record)
    ]
    return out


class BadChangeRecordError(ValueError):
    """A change-feed record that is not a `ChangeRecord` (skipped and counted)."""


def decode_changes(value: bytes | None) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The (artifact pairs, collection pairs) of one change-feed record."""
    try:
        raw = orjson.loads(value or b"")
        artifacts = [(str(i), int(v)) for i, v in raw["a"]]
        collections = [(str(i), int(v)) for i, v in raw.get("c", [])]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadChangeRecordError(f"not a change record: {exc}") from exc
    return artifacts, collections


def merge_changes(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The highest document version of each changed document."""
    out: dict[str, int] = {}
    for doc_id, version in pairs:
        if version > out.get(doc_id, -1):
            out[doc_id] = version
    return out

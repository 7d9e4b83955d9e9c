"""PURE: the searchable text of an artifact (the `x` object of its documents).

Full-text search (docs/search.md) matches words of an artifact's key, description, data
and metadata. `data` is whatever the producer sent: markdown or an image URL (a string),
a link (`[text](url)` markdown), a progress value (a number), a table (Prefect sends it
JSON-encoded as a string: a list of rows or a dict of columns) or any JSON value. Its text
is every scalar leaf — table cells and column names included — in document order;
numbers and booleans as JSON writes them. Each field is cut at `MAX_FIELD_CHARS`
(Elasticsearch analyses at most a million characters of a field for highlighting; the
cut keeps documents and indexing cheap): words beyond it are not searchable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

MAX_FIELD_CHARS = 100_000
"""Characters of one text field that are indexed (the rest is not searchable)."""

_MAX_DEPTH = 64


def _scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return value
    return None


def _leaves(value: Any, depth: int = 0) -> Iterator[str]:
    """Scalar leaves of a JSON value, with the keys of objects, in document order."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _leaves(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, depth + 1)
    else:
        text = _scalar(value)
        if text:
            yield text


def _join(parts: Iterator[str]) -> str | None:
    out: list[str] = []
    size = 0
    for part in parts:
        if size >= MAX_FIELD_CHARS:
            break
        out.append(part)
        size += len(part) + 1
    text = "\n".join(out)[:MAX_FIELD_CHARS]
    return text or None


def data_text(artifact_type: str | None, data: Any) -> str | None:
    """The searchable text of an artifact's `data`."""
    if isinstance(data, str):
        if artifact_type == "table":
            try:
                decoded = json.loads(data)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict | list):
                return _join(_leaves(decoded))
        return data[:MAX_FIELD_CHARS] or None
    return _join(_leaves(data))


def search_text(doc: dict[str, Any]) -> dict[str, str]:
    """The `x` object of a document with an artifact's own fields (absent parts left out)."""
    out: dict[str, str] = {}
    key = doc.get("key")
    if key:
        out["key"] = key[:MAX_FIELD_CHARS]
    description = doc.get("description")
    if description:
        out["description"] = description[:MAX_FIELD_CHARS]
    data = data_text(doc.get("type"), doc.get("data"))
    if data:
        out["data"] = data
    metadata = doc.get("metadata_")
    if metadata:
        text = _join(_leaves(metadata))
        if text:
            out["metadata"] = text
    return out

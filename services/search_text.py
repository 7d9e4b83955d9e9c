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
import math
import re
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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


# -- typed values ---------------------------------------------------------------------------
MAX_VALUES = 500
"""(key, value) pairs indexed per document; the rest cannot be queried by value."""
MAX_KEY_CHARS = 200
MAX_EXACT_CHARS = 256
"""Longer strings are not exact values (their words are still in the full text)."""

SEP = "\x00"
"""Between a key and its encoded value in one keyword term: `data.region\\x00emea`."""
_SIGN = 1 << 63
_MASK = (1 << 64) - 1


def encode_number(value: float) -> str:
    """A finite double as 16 hex digits whose string order is the numeric order."""
    bits = int.from_bytes(struct.pack(">d", float(value) + 0.0), "big")  # -0.0 is 0.0
    bits = (~bits & _MASK) if bits & _SIGN else (bits | _SIGN)
    return f"{bits:016x}"


def encode_micros(micros: int) -> str:
    """Microseconds since the epoch (signed 64 bits) as 16 hex digits in time order."""
    return f"{(micros + _SIGN) & _MASK:016x}"


def parse_number(text: str) -> float | None:
    """The finite number a string spells in decimal notation, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and _NUMERIC.fullmatch(text.strip()) else None


_NUMERIC = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_micros(text: str) -> int | None:
    """Microseconds since the epoch of an ISO 8601 timestamp string (UTC when no zone)."""
    if len(text) < 10 or not text[:4].isdigit() or text[4] != "-":
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICRO


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _pairs(prefix: str, value: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(dotted key, scalar) pairs of a JSON value; list items share their list's key."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _pairs(f"{prefix}.{key}", item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _pairs(prefix, item, depth + 1)
    elif value is not None:
        yield prefix, value


def typed_values(doc: dict[str, Any]) -> dict[str, list[str]]:
    """The `v` object of a document: `metadata.<key>` and `data.<path>` values as typed
    terms (`s` exact strings, `n` numbers, `d` timestamps, `b` booleans, `k` the keys),
    each `key\\x00encoded value`, so any user key queries by value without adding a
    mapping field. Numbers and timestamps written as strings (Prefect's metadata values
    are strings) are numbers and timestamps too. At most `MAX_VALUES` pairs."""
    data = doc.get("data")
    if doc.get("type") == "table" and isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    if isinstance(data, str):
        data = None  # markdown, links, images: words only (the full text)
    out: dict[str, list[str]] = {"k": [], "s": [], "n": [], "d": [], "b": []}
    keys: set[str] = set()
    count = 0
    pairs = [*_pairs("metadata", doc.get("metadata_") or {}), *_pairs("data", data)]
    for key, value in pairs:
        if count >= MAX_VALUES:
            break
        if len(key) > MAX_KEY_CHARS or SEP in key:
            continue
        count += 1
        if key not in keys:
            keys.add(key)
            out["k"].append(key)
        if isinstance(value, bool):
            out["b"].append(f"{key}{SEP}{'true' if value else 'false'}")
        elif isinstance(value, int | float):
            if math.isfinite(value):
                out["n"].append(f"{key}{SEP}{encode_number(value)}")
        elif isinstance(value, str):
            if len(value) <= MAX_EXACT_CHARS:
                out["s"].append(f"{key}{SEP}{value}")
            number = parse_number(value)
            if number is not None:
                out["n"].append(f"{key}{SEP}{encode_number(number)}")
            micros = parse_micros(value)
            if micros is not None:
                out["d"].append(f"{key}{SEP}{encode_micros(micros)}")
    return {name: sorted(set(terms)) for name, terms in out.items() if terms}

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
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_FIELD_CHARS = 100_000
"""Characters of one text field that are indexed (the rest is not searchable)."""

_MAX_DEPTH = 64


def _number_text(value: int | float) -> str:
    """A number as JSON writes it (Python's `json` module: `NaN`, `Infinity` included)."""
    if type(value) is int:
        return str(value)
    if type(value) is float and math.isfinite(value):
        return repr(value)
    return json.dumps(value)


def _scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value)
    if isinstance(value, str):
        return value
    return None


class _Text:
    """Parts of one text field, in document order, until `MAX_FIELD_CHARS` is reached."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def add(self, part: str) -> bool:
        """Keep `part`; False once the field is full (nothing more is kept)."""
        if self.size >= MAX_FIELD_CHARS:
            return False
        self.parts.append(part)
        self.size += len(part) + 1
        return True

    def walk(self, value: Any, depth: int = 0) -> bool:
        """Scalar leaves of a JSON value with the keys of objects (False once full)."""
        if depth > _MAX_DEPTH:
            return True
        if isinstance(value, str):  # the common leaf first
            return self.add(value) if value else True
        if isinstance(value, dict):
            depth += 1
            for key, item in value.items():
                if not self.add(str(key)) or not self.walk(item, depth):
                    return False
        elif isinstance(value, list):
            depth += 1
            for item in value:
                if not self.walk(item, depth):
                    return False
        else:
            text = _scalar(value)
            if text:
                return self.add(text)
        return True

    def text(self) -> str | None:
        return "\n".join(self.parts)[:MAX_FIELD_CHARS] or None


def _leaves_text(value: Any) -> str | None:
    if type(value) is dict:  # the common case, a flat object of strings (metadata)
        parts: list[str] = []
        for key, item in value.items():
            if type(key) is not str or type(item) is not str:
                break
            parts.append(key)
            if item:
                parts.append(item)
        else:
            text = "\n".join(parts)
            if len(text) < MAX_FIELD_CHARS:  # every part kept, nothing cut: as `_Text`
                return text or None
    out = _Text()
    out.walk(value)
    return out.text()


def _decode_table(data: str) -> Any:
    """A table's JSON text decoded (None when it is not JSON). Python's `json`, not orjson:
    integers beyond 64 bits stay exact integers, `NaN` and `Infinity` are read."""
    try:
        return json.loads(data)
    except ValueError:
        return None


def data_text(artifact_type: str | None, data: Any) -> str | None:
    """The searchable text of an artifact's `data`."""
    return _data_text(artifact_type, data, _MISSING)


_MISSING = object()


def _data_text(artifact_type: str | None, data: Any, decoded: Any) -> str | None:
    if isinstance(data, str):
        if artifact_type == "table":
            if decoded is _MISSING:
                decoded = _decode_table(data)
            if isinstance(decoded, dict | list):
                return _leaves_text(decoded)
        return data[:MAX_FIELD_CHARS] or None
    return _leaves_text(data)


def search_text(doc: dict[str, Any]) -> dict[str, str]:
    """The `x` object of a document with an artifact's own fields (absent parts left out)."""
    return _search_text(doc, _MISSING)


def searchable(doc: dict[str, Any]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """`(search_text(doc), typed_values(doc))`, decoding a table's JSON once."""
    data = doc.get("data")
    decoded = (
        _decode_table(data) if doc.get("type") == "table" and isinstance(data, str) else _MISSING
    )
    return _search_text(doc, decoded), _typed_values(doc, decoded)


def _search_text(doc: dict[str, Any], decoded: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    key = doc.get("key")
    if key:
        out["key"] = key[:MAX_FIELD_CHARS]
    description = doc.get("description")
    if description:
        out["description"] = description[:MAX_FIELD_CHARS]
    data = _data_text(doc.get("type"), doc.get("data"), decoded)
    if data:
        out["data"] = data
    metadata = doc.get("metadata_")
    if metadata:
        text = _leaves_text(metadata)
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
    stripped = text.strip()  # str.strip() also drops \x1c-\x1f, which float() refuses
    if _NUMERIC.fullmatch(stripped) is None:  # also what `float` alone would accept:
        return None  # "nan", "1_000", "infinity"
    value = float(stripped)
    return value if math.isfinite(value) else None


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


def _walk_pairs(pairs: list[tuple[str, Any]], prefix: str, value: Any, depth: int) -> bool:
    """Append the (dotted key, scalar) pairs of a JSON value to `pairs`; list items share
    their list's key. Keys too long or holding `SEP` are left out; False once
    `MAX_VALUES` pairs are kept (nothing more is)."""
    if depth > _MAX_DEPTH:
        return True
    kind = type(value)
    if kind is dict or (kind is not list and isinstance(value, dict)):
        depth += 1
        for key, item in value.items():
            if type(item) is str and depth <= _MAX_DEPTH:  # a string leaf, inline
                path = f"{prefix}.{key}"
                if len(path) <= MAX_KEY_CHARS and SEP not in path:
                    pairs.append((path, item))
                    if len(pairs) >= MAX_VALUES:
                        return False
            elif not _walk_pairs(pairs, f"{prefix}.{key}", item, depth):
                return False
    elif kind is list or isinstance(value, list):
        depth += 1
        for item in value:
            if not _walk_pairs(pairs, prefix, item, depth):
                return False
    elif value is not None:
        if len(prefix) > MAX_KEY_CHARS or SEP in prefix:
            return True
        pairs.append((prefix, value))
        return len(pairs) < MAX_VALUES
    return True


def typed_values(doc: dict[str, Any]) -> dict[str, list[str]]:
    """The `v` object of a document: `metadata.<key>` and `data.<path>` values as typed
    terms (`s` exact strings, `n` numbers, `d` timestamps, `b` booleans, `k` the keys),
    each `key\\x00encoded value`, so any user key queries by value without adding a
    mapping field. Numbers and timestamps written as strings (Prefect's metadata values
    are strings) are numbers and timestamps too. At most `MAX_VALUES` pairs."""
    data = doc.get("data")
    decoded = (
        _decode_table(data) if doc.get("type") == "table" and isinstance(data, str) else _MISSING
    )
    return _typed_values(doc, decoded)


def _typed_values(doc: dict[str, Any], decoded: Any) -> dict[str, list[str]]:
    data = doc.get("data") if decoded is _MISSING else decoded
    if isinstance(data, str):
        data = None  # markdown, links, images: words only (the full text)
    pairs: list[tuple[str, Any]] = []
    if _walk_pairs(pairs, "metadata", doc.get("metadata_") or {}, 0):
        _walk_pairs(pairs, "data", data, 0)
    if not pairs:
        return {}
    # sets: every family is returned sorted and without repeats
    names: set[str] = set()
    strings: set[str] = set()
    numbers: set[str] = set()
    times: set[str] = set()
    bools: set[str] = set()
    for key, value in pairs:
        names.add(key)
        if isinstance(value, bool):
            bools.add(f"{key}{SEP}{'true' if value else 'false'}")
        elif isinstance(value, int | float):
            if math.isfinite(value):
                numbers.add(f"{key}{SEP}{encode_number(value)}")
        elif isinstance(value, str):
            if len(value) <= MAX_EXACT_CHARS:
                strings.add(f"{key}{SEP}{value}")
            number = _parse_number_fast(value)
            if number is not None:
                numbers.add(f"{key}{SEP}{encode_number(number)}")
            if len(value) >= 10 and value[4:5] == "-":  # parse_micros' own first test
                micros = parse_micros(value)
                if micros is not None:
                    times.add(f"{key}{SEP}{encode_micros(micros)}")
    out: dict[str, list[str]] = {"k": sorted(names)}
    if strings:
        out["s"] = sorted(strings)
    if numbers:
        out["n"] = sorted(numbers)
    if times:
        out["d"] = sorted(times)
    if bools:
        out["b"] = sorted(bools)
    return out


_NUMBER_START = frozenset("+-.0123456789")


def _parse_number_fast(text: str) -> float | None:
    """`parse_number`, rejecting at once what cannot start a number (most strings)."""
    first = text[:1]
    # what strip() removes (isspace) and what the pattern's \d takes (Unicode digits)
    if first in _NUMBER_START or first.isspace() or first.isdigit():
        return parse_number(text)
    return None

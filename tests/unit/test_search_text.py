"""The searchable text of artifacts (services/search_text.py): what each kind of data gives."""

from __future__ import annotations

import json
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.search_text import (
    MAX_EXACT_CHARS,
    MAX_FIELD_CHARS,
    MAX_KEY_CHARS,
    MAX_VALUES,
    data_text,
    encode_micros,
    encode_number,
    parse_micros,
    parse_number,
    search_text,
    searchable,
    typed_values,
)


def test_markdown_and_links_are_their_text() -> None:
    assert data_text("markdown", "# Title\nSome **bold** words") == "# Title\nSome **bold** words"
    assert (
        data_text("link", "[dashboard](https://x.example/d)") == "[dashboard](https://x.example/d)"
    )


def test_a_table_sent_as_json_gives_cells_and_column_names() -> None:
    rows = json.dumps([{"region": "emea", "accuracy": 0.93}, {"region": "apac", "ok": True}])
    assert data_text("table", rows) == "region\nemea\naccuracy\n0.93\nregion\napac\nok\ntrue"
    columns = json.dumps({"region": ["emea", None], "n": [1, 2]})
    assert data_text("table", columns) == "region\nemea\nn\n1\n2"


def test_a_table_that_is_not_json_is_its_text() -> None:
    assert data_text("table", "a | b\n1 | 2") == "a | b\n1 | 2"
    assert data_text("markdown", json.dumps([1, 2])) == "[1, 2]"  # only tables are decoded


def test_numbers_objects_and_nothing() -> None:
    assert data_text("progress", 42.5) == "42.5"
    assert data_text("progress", 100) == "100"
    assert data_text(None, {"a": {"b": [1, "two", None, False]}}) == "a\nb\n1\ntwo\nfalse"
    assert data_text(None, None) is None
    assert data_text("markdown", "") is None


def test_every_field_is_cut_at_the_limit() -> None:
    long = "word " * (MAX_FIELD_CHARS // 2)
    assert len(data_text("markdown", long) or "") == MAX_FIELD_CHARS
    cells = json.dumps([{"c": "x" * 1000} for _ in range(500)])
    assert len(data_text("table", cells) or "") <= MAX_FIELD_CHARS
    deep: object = "bottom"
    for _ in range(200):
        deep = [deep]
    assert data_text(None, deep) is None  # beyond the depth bound: nothing, no recursion error


def test_the_x_object_leaves_out_absent_parts() -> None:
    doc = {
        "key": "sales-report",
        "description": None,
        "type": "markdown",
        "data": "Revenue grew",
        "metadata_": {"owner": "ml-team"},
    }
    assert search_text(doc) == {
        "key": "sales-report",
        "data": "Revenue grew",
        "metadata": "owner\nml-team",
    }
    assert search_text({"key": None, "data": None, "metadata_": {}}) == {}


# -- typed values --------------------------------------------------------------------------
NUMBERS = [
    -math.inf,
    -1e308,
    -2.5,
    -1.0,
    -5e-324,
    -0.0,
    0.0,
    5e-324,
    1e-9,
    0.5,
    1.0,
    2.0,
    10.0,
    1e300,
    math.inf,
]


def test_encoded_numbers_sort_like_the_numbers() -> None:
    finite = [n for n in NUMBERS if math.isfinite(n)]
    encoded = [encode_number(n) for n in finite]
    assert sorted(encoded) == encoded
    assert all(len(e) == 16 for e in encoded)
    rng = random.Random(5)
    sample = [rng.uniform(-1e6, 1e6) for _ in range(2_000)] + [float(i) for i in range(-50, 50)]
    assert sorted(sample) == sorted(sample, key=encode_number)


def test_encoded_microseconds_sort_like_time() -> None:
    moments = [-(2**62), -62_135_596_800_000_000, -1, 0, 1, 1_704_067_200_000_000, 2**62]
    assert sorted(encode_micros(m) for m in moments) == [encode_micros(m) for m in moments]


def test_strings_that_spell_numbers_or_timestamps() -> None:
    assert parse_number("0.93") == 0.93 and parse_number(" -1e3 ") == -1000.0
    # str.strip() drops the separators \x1c-\x1f too; float() alone refused what was left
    assert parse_number("0\x1f") == 0.0 and parse_number("\x1c2.5\x1d") == 2.5
    for text in ("nan", "inf", "1_000", "0x10", "1.2.3", "", "12 apples"):
        assert parse_number(text) is None, text
    assert parse_micros("1970-01-01T00:00:01Z") == 1_000_000
    assert parse_micros("1970-01-01T01:00:00+01:00") == 0
    assert parse_micros("1970-01-02") == 86_400_000_000
    for text in ("2024-13-01", "yesterday", "12345", "2024"):
        assert parse_micros(text) is None, text


def test_metadata_and_table_values_become_typed_terms() -> None:
    table = json.dumps([{"region": "emea", "accuracy": 0.93, "ok": True}, {"region": "apac"}])
    doc = {
        "type": "table",
        "data": table,
        "metadata_": {"owner": "ml-team", "threshold": "0.9", "run_at": "2024-01-01T00:00:00Z"},
    }
    v = typed_values(doc)
    assert v["k"] == sorted(
        [
            "data.accuracy",
            "data.ok",
            "data.region",
            "metadata.owner",
            "metadata.run_at",
            "metadata.threshold",
        ]
    )
    assert "data.region\x00emea" in v["s"] and "data.region\x00apac" in v["s"]
    assert v["n"] == sorted(
        ["data.accuracy\x00" + encode_number(0.93), "metadata.threshold\x00" + encode_number(0.9)]
    )
    assert v["d"] == ["metadata.run_at\x00" + encode_micros(1_704_067_200_000_000)]
    assert v["b"] == ["data.ok\x00true"]


def test_typed_values_of_other_data_and_their_bounds() -> None:
    assert typed_values({"type": "progress", "data": 42.5}) == {
        "k": ["data"],
        "n": ["data\x00" + encode_number(42.5)],
    }
    assert typed_values({"type": "markdown", "data": "# words only"}) == {}
    assert typed_values({"type": None, "data": {"a": {"b": [1, 2]}}})["k"] == ["data.a.b"]
    many = {"type": None, "data": {f"c{i}": i for i in range(MAX_VALUES + 50)}}
    assert len(typed_values(many)["n"]) == MAX_VALUES
    long_value = {
        "metadata_": {"note": "x" * (MAX_EXACT_CHARS + 1), "k" * (MAX_KEY_CHARS + 1): "v"}
    }
    assert typed_values(long_value) == {"k": ["metadata.note"]}  # too long: exists, no exact value


# -- the one-pass walkers against a plain reference ---------------------------------------
def _ref_leaves(value: object, depth: int = 0) -> list[str]:
    """Reference: scalar leaves and object keys in document order, by plain recursion."""
    if depth > 64:
        return []
    if isinstance(value, dict):
        out: list[str] = []
        for key, item in value.items():
            out.append(str(key))
            out.extend(_ref_leaves(item, depth + 1))
        return out
    if isinstance(value, list):
        return [leaf for item in value for leaf in _ref_leaves(item, depth + 1)]
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    text = json.dumps(value) if isinstance(value, int | float) else str(value)
    return [text] if text else []


def _ref_join(parts: list[str]) -> str | None:
    kept, size = [], 0
    for part in parts:
        if size >= MAX_FIELD_CHARS:
            break
        kept.append(part)
        size += len(part) + 1
    return "\n".join(kept)[:MAX_FIELD_CHARS] or None


def _ref_pairs(prefix: str, value: object, depth: int = 0) -> list[tuple[str, object]]:
    if depth > 64:
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _ref_pairs(f"{prefix}.{k}", v, depth + 1)]
    if isinstance(value, list):
        return [p for v in value for p in _ref_pairs(prefix, v, depth + 1)]
    return [] if value is None else [(prefix, value)]


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    data=_json,
    metadata=st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=5),
    kind=st.sampled_from(["table", "markdown", None]),
    as_text=st.booleans(),
)
def test_searchable_matches_a_plain_reference(
    data: object, metadata: dict[str, str], kind: str | None, as_text: bool
) -> None:
    """Tables arrive as JSON text; other data as a value: both paths against the reference
    (cells, keys and typed pairs in document order, the same limits)."""
    if as_text:
        try:
            data = json.dumps(data)
        except ValueError:
            data = "not json"
    doc = {"key": "k", "description": None, "type": kind, "data": data, "metadata_": metadata}
    decoded = data
    if kind == "table" and isinstance(data, str):
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = None
    x, v = searchable(doc)
    assert (x, v) == (search_text(doc), typed_values(doc))
    if isinstance(data, str) and not (kind == "table" and isinstance(decoded, dict | list)):
        want_data = data[:MAX_FIELD_CHARS] or None
    else:
        want_data = _ref_join(_ref_leaves(decoded))
    assert x.get("data") == want_data
    assert x.get("metadata") == (_ref_join(_ref_leaves(metadata)) if metadata else None)
    pairs = _ref_pairs("metadata", metadata)
    pairs += _ref_pairs("data", None if isinstance(decoded, str) else decoded)
    kept = [k for k, _ in pairs if len(k) <= MAX_KEY_CHARS and "\x00" not in k][:MAX_VALUES]
    assert v.get("k", []) == sorted(set(kept))
    want_bools = sorted(
        {f"{k}\x00{'true' if val else 'false'}" for k, val in pairs if isinstance(val, bool)}
        & {f"{k}\x00{b}" for k in kept for b in ("true", "false")}
    )
    assert v.get("b", []) == want_bools

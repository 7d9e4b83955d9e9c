"""The searchable text of artifacts (services/search_text.py): what each kind of data gives."""

from __future__ import annotations

import json

from services.search_text import MAX_FIELD_CHARS, data_text, search_text


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

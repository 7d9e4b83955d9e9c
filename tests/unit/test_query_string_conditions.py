"""Typed conditions inside the query string (query/query_string.py) mean what the same
condition in `where` means: the query string carries the rendering of the clause the
`where` builder makes, and every refusal of `where` is a refusal in `q` too."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from query.conditions import Condition, condition_clause, render_clause
from query.query_string import rewrite_fields
from services.errors import TranslationError

FIELDS = st.sampled_from(
    ["metadata.accuracy", "data.region", "data", "metadata.run_at", "data.a.b", "metadata.f1-x"]
)
NUMBERS = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-(10**6), 10**6)
DATES = st.datetimes().map(lambda d: d.isoformat()[:19] + "Z")
WORDS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
SYMBOL = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _spelled(value: Any) -> str:
    """A JSON value as the query string spells it (numbers bare, strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _quote(value)


def _where_text(cond: Condition) -> str:
    """What `where` makes of the condition, rendered; or the refusal's text."""
    try:
        return "(" + render_clause(condition_clause(cond)) + ")"
    except TranslationError as exc:
        return f"refused: {exc}"


def _q_text(q: str) -> str:
    try:
        return rewrite_fields(q)
    except TranslationError as exc:
        return f"refused: {exc}"


@given(FIELDS, st.sampled_from(["gte", "gt", "lte", "lt"]), NUMBERS | DATES | WORDS)
def test_a_comparison_in_q_is_the_where_condition(field: str, op: str, value: Any) -> None:
    text = value if isinstance(value, str) else repr(value)
    for q in (f"{field} {SYMBOL[op]} {_quote(text)}", f"{field}:{SYMBOL[op]}{_quote(text)}"):
        assert _q_text(q) == _where_text(Condition(field=field, op=op, value=value))  # type: ignore[arg-type]


@given(FIELDS.filter(lambda f: "." in f), NUMBERS | WORDS | st.booleans())
def test_field_colon_value_is_the_eq_condition(field: str, value: Any) -> None:
    assert _q_text(f"{field}:{_spelled(value)}") == _where_text(
        Condition(field=field, op="eq", value=value)
    )


@given(FIELDS.filter(lambda f: "." in f), NUMBERS, NUMBERS, st.booleans(), st.booleans())
def test_a_range_is_both_where_conditions(
    field: str, low: float, high: float, low_in: bool, high_in: bool
) -> None:
    q = f"{field}:{'[' if low_in else '{'}{low!r} TO {high!r}{']' if high_in else '}'}"
    first = Condition(field=field, op="gte" if low_in else "gt", value=low)
    second = Condition(field=field, op="lte" if high_in else "lt", value=high)
    assert rewrite_fields(q) == (
        f"({render_clause(condition_clause(first))} AND {render_clause(condition_clause(second))})"
    )


@given(
    FIELDS.filter(lambda f: "." in f),
    st.lists(NUMBERS | WORDS | st.booleans(), min_size=1, max_size=4),
)
def test_a_list_of_alternatives_is_the_in_condition(field: str, values: list[Any]) -> None:
    q = f"{field}:(" + " OR ".join(_spelled(v) for v in values) + ")"
    assert _q_text(q) == _where_text(Condition(field=field, op="in", value=values))


@pytest.mark.parametrize(
    ("q", "want"),
    [
        (
            "metadata.accuracy >= 0.9 AND data.region:emea",
            "({a}) AND ({r})".format(
                a=render_clause(
                    condition_clause(Condition(field="metadata.accuracy", op="gte", value=0.9))
                ),
                r='v.s:"data.region\x00emea"',
            ),
        ),
        ("_exists_:metadata.owner", '(v.k:"metadata.owner")'),
        ("_exists_:metadata", "_exists_:x.metadata"),
        ("data:emea", "x.data:emea"),
        ("database", "database"),
        ("metadata.ok:true", '(v.b:"metadata.ok\x00true")'),
        ('-metadata.owner:"ml team"', '-(v.s:"metadata.owner\x00ml team")'),
        ("metadata.x:[* TO *]", '(v.k:"metadata.x")'),
        ('"metadata.x >= 1"', '"metadata.x >= 1"'),
    ],
)
def test_conditions_combine_with_the_rest_of_the_grammar(q: str, want: str) -> None:
    assert rewrite_fields(q) == want


def test_grouped_conditions_keep_their_parentheses() -> None:
    out = rewrite_fields("(metadata.a > 1 OR data:emea) AND NOT data < 5")
    assert out.startswith("((v.n:{") and ") OR x.data:emea) AND NOT (v.n:[" in out


@pytest.mark.parametrize(
    ("q", "says"),
    [
        ("metadata.x >= ", "metadata.x >=: a value is missing"),
        ("metadata.x >= abc", "compares numbers or timestamps, not 'abc'"),
        ("metadata.x < true", "compares numbers or timestamps"),
        ("foo.bar >= 1", "Unknown field 'foo.bar' in a comparison"),
        ("key > 3", "Unknown field 'key' in a comparison"),
        ("metadata.x:[1 5]", r"a range is written \[low TO high\]"),
        ("metadata.x:[1 TO 5", "a range ends with"),
        ("metadata.x: 5", "a value is missing"),
        ('metadata.x:"open', "unclosed quote"),
        ("metadata." + "k" * 300 + ":1", "not a value's field"),
        ("_exists_:foo.bar", "Unknown field 'foo.bar'"),
        ("data.region:(a AND b)", "joined by OR only"),
        ("data.region:(a OR b", "is not closed"),
        ("data.region:(OR)", "lists no value"),
        ("data.region:()", "a value is missing"),
        ("metadata." + "k" * 300 + ":(1 OR 2)", "not a value's field"),
    ],
)
def test_malformed_conditions_are_refused_with_the_reason(q: str, says: str) -> None:
    with pytest.raises(TranslationError, match=says):
        rewrite_fields(q)


def test_render_clause_refuses_what_it_cannot_spell() -> None:
    with pytest.raises(ValueError, match="not a clause"):
        render_clause({"match_all": {}})
    with pytest.raises(ValueError, match="two-sided"):
        render_clause({"range": {"v.n": {"gte": "a"}}})

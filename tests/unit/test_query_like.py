"""The ``like_`` translation agrees with PostgreSQL ILIKE (C collation) on any input."""

from __future__ import annotations

import pytest
from es_eval import wildcard_match
from hypothesis import given, settings
from hypothesis import strategies as st
from sql_ref import pg_ilike

from query.like import ascii_lower, contains_to_wildcard, parse_like_pattern, tokens_to_wildcard

ALPHABET = st.sampled_from([*"aAbBzZ%_\\*?. é€İı", "\U0001f600"])
TEXT = st.text(alphabet=ALPHABET, max_size=8)


@settings(max_examples=1500, deadline=None)
@given(value=TEXT.filter(bool), subject=TEXT)
def test_wildcard_agrees_with_postgres_ilike(value: str, subject: str) -> None:
    expected = pg_ilike(subject, f"%{value}%")
    pattern = contains_to_wildcard(value)
    assert wildcard_match(pattern, ascii_lower(subject)) is expected


@settings(max_examples=500, deadline=None)
@given(value=TEXT.filter(bool))
def test_contained_value_always_matches_itself_when_free_of_metacharacters(value: str) -> None:
    plain = value.replace("%", "").replace("_", "").replace("\\", "")
    if plain:
        assert wildcard_match(contains_to_wildcard(plain), ascii_lower("x" + plain + "y"))


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("marvin", "*marvin*"),
        ("MaRvIn", "*marvin*"),
        ("a_b", "*a?b*"),
        ("a%b", "*a*b*"),
        ("%", "*"),
        ("%%%", "*"),
        ("a\\%", "*a%*"),  # escaped % is literal, the closing % stays a wildcard
        ("a\\", "*a%"),  # a trailing backslash escapes the closing %: "ends with a%"
        ("a\\\\", "*a\\\\*"),  # an escaped backslash is a literal backslash
        ("a\\_", "*a_*"),
        ("a*b?", "*a\\*b\\?*"),
        ("\\x", "*x*"),
        ("ÉİZ", "*Éİz*"),  # only ASCII letters are folded
    ],
)
def test_known_translations(value: str, pattern: str) -> None:
    assert contains_to_wildcard(value) == pattern


def test_lone_trailing_backslash_is_literal() -> None:
    assert tokens_to_wildcard(parse_like_pattern("a\\")) == "a\\\\"


def test_reference_rejects_dangling_escape() -> None:
    with pytest.raises(ValueError):
        pg_ilike("a", "a\\")

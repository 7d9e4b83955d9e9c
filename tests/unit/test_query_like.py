"""The ``like_`` translation agrees with PostgreSQL ILIKE (C collation) on any input."""

from __future__ import annotations

import re

import pytest
from es_eval import evaluate, wildcard_match
from hypothesis import given, settings
from hypothesis import strategies as st
from sql_ref import pg_ilike

from query.like import (
    ascii_lower,
    contains_literal,
    contains_to_wildcard,
    parse_like_pattern,
    tokens_to_wildcard,
)
from query.translate import contains
from services.trigrams import trigram_text, trigram_tokens

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


# -- trigram phrases (services.trigrams, `key_tri`) --------------------------------------
TRIGRAM_ALPHABET = st.sampled_from([*"aAbB-%_\\~ \t\x1fé€", "\U0001f600", "\x85", "\u3000"])
TRIGRAM_TEXT = st.text(alphabet=TRIGRAM_ALPHABET, max_size=9)


def _phrase_match(value: str, subject: str) -> bool | None:
    """`contains` through the trigram field as Elasticsearch would evaluate it, or None
    when the value is not answered by trigrams."""
    query = contains("key_ci", value)
    if "match_phrase" not in query:
        return None
    folded = ascii_lower(subject)
    return evaluate(query, {"key_ci": folded, "key_tri": trigram_text(folded)})


@settings(max_examples=3000, deadline=None)
@given(value=TRIGRAM_TEXT.filter(bool), subject=TRIGRAM_TEXT)
def test_trigram_phrases_agree_with_postgres_ilike(value: str, subject: str) -> None:
    got = _phrase_match(value, subject)
    if got is not None:
        assert got is pg_ilike(subject, f"%{value}%")


@settings(max_examples=500, deadline=None)
@given(subject=TRIGRAM_TEXT, start=st.integers(0, 9), size=st.integers(3, 9))
def test_every_plain_substring_is_found_through_trigrams(
    subject: str, start: int, size: int
) -> None:
    part = subject[start : start + size]
    value = "".join("\\" + c if c in "%_\\" else c for c in part)  # escaped: plain text
    if len(part) >= 3:
        assert _phrase_match(value, subject) is True


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("sales", "sales"),
        ("SaLeS", "sales"),
        ("%sales%", "sales"),  # the value's own outer % add nothing
        ("a\\%b", "a%b"),  # escaped metacharacters are literal text
        ("a\\_b", "a_b"),
        ("a\\\\b", "a\\b"),
        ("ÉİZ", "Éİz"),  # only ASCII letters are folded
        ("a%b", None),  # a wildcard inside: not a plain substring test
        ("a_b", None),
        ("abc\\", None),  # the closing % escaped: "ends with abc%"
        ("%", ""),
    ],
)
def test_contains_literal(value: str, literal: str | None) -> None:
    assert contains_literal(value) == literal


def test_trigram_tokens_hold_no_separator_and_encode_one_to_one() -> None:
    assert trigram_tokens("ab") == []
    assert trigram_tokens("sales") == ["sal", "ale", "les"]
    # `~`, whitespace (ASCII, Java-only and Unicode), controls and non-ASCII are escaped
    assert trigram_tokens("a~ \x1c\u3000é") == [
        "a~00007e~000020",
        "~00007e~000020~00001c",
        "~000020~00001c~003000",
        "~00001c~003000~0000e9",
    ]
    assert trigram_text("ab") is None
    assert trigram_text("abcd") == "abc bcd"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("sales", "match_phrase"),
        ("sa", "wildcard"),
        ("a%les", "wildcard"),
        ("s_les", "wildcard"),
        ("x" * 1_000, "match_phrase"),
        ("x" * 1_001, "wildcard"),  # past MAX_CHARS: a phrase would cost more than it saves
    ],
)
def test_contains_uses_trigrams_only_where_exact(value: str, kind: str) -> None:
    assert set(contains("key_ci", value)) == {kind}
    assert set(contains("fr.name_ci", value)) == {"wildcard"}  # no trigram sibling


@settings(max_examples=500, deadline=None)
@given(text=TRIGRAM_TEXT)
def test_trigram_tokens_decode_back_to_their_trigrams(text: str) -> None:
    """One to one: `~` starts an escape and never stands for itself, so a token decodes to
    exactly one trigram."""
    for i, token in enumerate(trigram_tokens(text)):
        # printable ASCII but `~` (0x21-0x7D), or `~` and six hex digits: no whitespace
        assert re.fullmatch(r"(?:~[0-9a-f]{6}|[!-}])+", token)
        decoded = re.sub(r"~([0-9a-f]{6})", lambda m: chr(int(m.group(1), 16)), token)
        assert decoded == text[i : i + 3]

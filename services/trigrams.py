"""PURE: the trigram text that answers Prefect's key `like_` without a wildcard scan.

Prefect's `like_` is `ILIKE '%value%'`. A `wildcard` query on the folded key (`key_ci`)
answers it exactly, but Elasticsearch first walks every distinct key in the index through
the pattern's automaton (at 1M artifacts, about 160,000 keys: most of the query's time),
whatever the page asked for.

`key_tri` holds the folded key's trigrams, in order, as whitespace-separated tokens of a
`text` field with positions (the core `whitespace` analyzer). A folded value `s` of three
characters or more occurs in the folded key exactly when the trigrams of `s` occur at
consecutive positions: the trigram at position `i` is the key's characters `i..i+2`, so
consecutive trigrams `p..p+len(s)-3` spell the key's characters `p..p+len(s)-1`. A
`match_phrase` of those tokens is that test; it reads three or more posting lists and
stops with the page (the indices are sorted by id, Prefect's default order).

Tokens must never contain a character the analyzer splits on, so each character is
itself when it is printable ASCII other than `~` (never whitespace), and `~` followed by
six hex digits of its code point otherwise (`~` never stands for itself: the encoding is
one to one).
"""

from __future__ import annotations

MIN_CHARS = 3
"""Values shorter than a trigram cannot be answered from `key_tri`."""
MAX_CHARS = 1_000
"""Longer values are not answered from `key_tri` either: a phrase of that many tokens costs
Elasticsearch more than it saves (a 30,000-character phrase of one repeated trigram took
2.3 s against a matching key), and the wildcard refuses what it cannot bound."""

_PLAIN = frozenset(chr(code) for code in range(0x21, 0x7F)) - {"~"}


def _char(char: str) -> str:
    return char if char in _PLAIN else f"~{ord(char):06x}"


def trigram_tokens(folded: str) -> list[str]:
    """The tokens of the trigrams of `folded`, in order (none below three characters)."""
    if len(folded) < MIN_CHARS:
        return []
    if folded.isascii() and folded.isprintable() and " " not in folded and "~" not in folded:
        # the common key: every character stands for itself (about half the time)
        return [folded[i : i + 3] for i in range(len(folded) - 2)]
    chars = [_char(char) for char in folded]
    return [chars[i] + chars[i + 1] + chars[i + 2] for i in range(len(chars) - 2)]


def trigram_text(folded: str) -> str | None:
    """The `key_tri` value of a folded key (None below three characters: nothing to index)."""
    return " ".join(trigram_tokens(folded)) or None

"""Reference implementations of the PostgreSQL behaviour Prefect's filters rely on.

Test-only helpers, written independently of the production modules, so that the
translation can be checked against them.
"""

from __future__ import annotations

from functools import cache

from query.like import ascii_lower


def pg_ilike(value: str, pattern: str) -> bool:
    """Reference: PostgreSQL ``value ILIKE pattern`` (backslash escape, ASCII folding).

    Written independently of ``query.like``: a memoised matcher walking the raw
    pattern, the way PostgreSQL's MatchText does.
    """
    text = ascii_lower(value)
    pat = ascii_lower(pattern)

    @cache
    def match(i: int, j: int) -> bool:
        if j == len(pat):
            return i == len(text)
        c = pat[j]
        if c == "%":
            return any(match(k, j + 1) for k in range(i, len(text) + 1))
        if c == "_":
            return i < len(text) and match(i + 1, j + 1)
        if c == "\\":
            if j + 1 == len(pat):
                raise ValueError("LIKE pattern must not end with escape character")
            return i < len(text) and text[i] == pat[j + 1] and match(i + 1, j + 2)
        return i < len(text) and text[i] == c and match(i + 1, j + 1)

    return match(0, 0)

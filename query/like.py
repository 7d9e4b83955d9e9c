"""Turn Prefect's ``like_`` (PostgreSQL ``ILIKE '%' || value || '%'``) into an ES wildcard.

Prefect wraps the caller's value in ``%`` on both sides and hands the result to
PostgreSQL's ``ILIKE`` without an ``ESCAPE`` clause, so the *value itself* is a
LIKE pattern: ``%`` is any run of characters, ``_`` exactly one character, and a
backslash makes the next character literal. Because the wrapping happens before
parsing, a value ending in a single backslash escapes the closing ``%`` and the
pattern becomes "ends with ...".

The document stores a ``_ci`` sibling with ASCII letters lowercased (PostgreSQL's
case folding under the C collation), so the pattern's literal characters are
folded the same way and the result is matched, case-sensitively, against that
field with Elasticsearch's ``wildcard`` query (``*`` any run, ``?`` one code
point, backslash escapes).

Where the field has a trigram sibling (``key_tri``, ``services.trigrams``), a value
whose pattern is a plain substring test of three characters or more (no ``%`` or ``_``
left inside once the wrapping ones are taken off) is answered by a phrase of its
trigrams instead: exact, and it does not walk every key (``contains_literal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from services.documents import ascii_lower

_WILDCARD_SPECIAL = frozenset("*?\\")


class TokenKind(Enum):
    """The three kinds of element a LIKE pattern is made of."""

    LITERAL = "literal"
    ANY_RUN = "any_run"
    ONE_CHAR = "one_char"


@dataclass(frozen=True, slots=True)
class Token:
    """One element of a parsed LIKE pattern; ``char`` is set for literals only."""

    kind: TokenKind
    char: str = ""


def parse_like_pattern(pattern: str) -> list[Token]:
    """Split a PostgreSQL LIKE pattern (backslash escape) into tokens.

    A trailing lone backslash is an error in PostgreSQL; it cannot occur for the
    ``%value%`` patterns Prefect builds, and is treated here as a literal
    backslash so the function is total.
    """
    tokens: list[Token] = []
    index = 0
    length = len(pattern)
    while index < length:
        char = pattern[index]
        if char == "\\":
            if index + 1 < length:
                tokens.append(Token(TokenKind.LITERAL, pattern[index + 1]))
                index += 2
                continue
            tokens.append(Token(TokenKind.LITERAL, "\\"))
        elif char == "%":
            tokens.append(Token(TokenKind.ANY_RUN))
        elif char == "_":
            tokens.append(Token(TokenKind.ONE_CHAR))
        else:
            tokens.append(Token(TokenKind.LITERAL, char))
        index += 1
    return tokens


def tokens_to_wildcard(tokens: list[Token]) -> str:
    """Render tokens as an ES wildcard pattern, folding literals to ASCII lowercase.

    Literal ``*``, ``?`` and backslash are escaped; runs of ``%`` become one ``*``.
    """
    parts: list[str] = []
    previous_star = False
    for token in tokens:
        if token.kind is TokenKind.ANY_RUN:
            if not previous_star:
                parts.append("*")
            previous_star = True
            continue
        previous_star = False
        if token.kind is TokenKind.ONE_CHAR:
            parts.append("?")
        else:
            char = ascii_lower(token.char)
            parts.append("\\" + char if char in _WILDCARD_SPECIAL else char)
    return "".join(parts)


def contains_to_wildcard(value: str) -> str:
    """The ES wildcard equivalent of Prefect's ``ILIKE '%' || value || '%'``."""
    return tokens_to_wildcard(parse_like_pattern(f"%{value}%"))


def contains_literal(value: str) -> str | None:
    """The folded text that ``ILIKE '%' || value || '%'`` looks for, when the pattern is a
    plain substring test; None when wildcards (``%``, ``_``) remain inside it, or when the
    pattern is not wrapped in ``%`` on both sides (a value ending in one backslash)."""
    return tokens_literal(parse_like_pattern(f"%{value}%"))


def tokens_literal(tokens: list[Token]) -> str | None:
    """`contains_literal` of an already parsed ``%value%`` pattern."""
    start, end = 0, len(tokens)
    if tokens[-1].kind is not TokenKind.ANY_RUN:
        return None
    while start < end and tokens[start].kind is TokenKind.ANY_RUN:
        start += 1
    while end > start and tokens[end - 1].kind is TokenKind.ANY_RUN:
        end -= 1
    inner = tokens[start:end]
    if any(token.kind is not TokenKind.LITERAL for token in inner):
        return None
    return ascii_lower("".join(token.char for token in inner))

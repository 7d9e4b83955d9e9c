"""PURE: the query string of a search (`q`, docs/search.md "The query string").

The user's query string is Lucene's query-string syntax with two changes, made by one
scan of the text (`rewrite_fields`) before Elasticsearch parses it:

- the user's field names (`data:emea`, `state:FAILED`) become the index's (`x.data`,
  `fr.state_type`); any other field name is refused, so nothing else of the index can be
  reached from a query;
- typed conditions on values (`metadata.accuracy >= 0.9`, `data.region:emea`,
  `metadata.x:[1 TO 5]`, `_exists_:metadata.owner`) become the query-string rendering of
  the very clause the same condition in `where` builds (query/conditions.py), so a
  condition means the same in both places.

Everything else (words, phrases, AND/OR/NOT, groups, prefixes, fuzziness) is left to
Elasticsearch's parser, whose refusals the API answers with a 422.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

from query.conditions import Condition, ConditionOp, condition_query_string
from query.translate import Query
from services.errors import TranslationError
from services.search_text import parse_number

TEXT_FIELDS: dict[str, str] = {
    "key": "x.key",
    "description": "x.description",
    "data": "x.data",
    "metadata": "x.metadata",
}
"""Analysed text: words match, case-insensitively."""

EXACT_FIELDS: dict[str, str] = {
    "type": "type",
    "flow": "flow.name",
    "deployment": "dep.name",
    "flow_run": "fr.name",
    "task_run": "tr.name",
    "state": "fr.state_type",
    "task_run_state": "tr.state_type",
    "tags": "fr.tags",
}
"""Exact values (case-sensitive): `type:markdown`, `state:COMPLETED`, `tags:prod`."""

QUERY_FIELDS = {**TEXT_FIELDS, **EXACT_FIELDS}
DEFAULT_FIELDS = ["x.key^3", "x.description^2", "x.data", "x.metadata"]
"""What a word without a field prefix is searched in (a key match ranks highest)."""

_FIELD_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*):")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_KEY_CHARS = r"[^\s:<>=()\[\]{}\"\\!^~*?]"
_TYPED = re.compile(rf"(?:metadata|data)(?:\.{_KEY_CHARS}+)?(?![A-Za-z0-9_])")
"""A value's field: `metadata.<key>`, `data.<column or path>`, `data` (progress)."""
_COMPARE = re.compile(r"\s*(>=|<=|>|<)")
_SPACE = re.compile(r"\s*")
_OPS: dict[str, ConditionOp] = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}
_CLOSE = {"[": "gte", "{": "gt"}
_OPEN = {"]": "lte", "}": "lt"}


@dataclass(frozen=True)
class _Token:
    text: str
    quoted: bool
    end: int


def _value(q: str, i: int, stop: str, what: str) -> _Token:
    """The value starting at `i` (after blanks): a quoted string or a run of characters
    up to a blank or one of `stop`."""
    i = _SPACE.match(q, i).end()  # type: ignore[union-attr]  # matches the empty string
    if i < len(q) and q[i] == '"':
        out: list[str] = []
        j = i + 1
        while j < len(q) and q[j] != '"':
            if q[j] == "\\" and j + 1 < len(q):
                j += 1
            out.append(q[j])
            j += 1
        if j >= len(q):
            raise TranslationError("The query has an unclosed quote.")
        return _Token("".join(out), True, j + 1)
    j = i
    while j < len(q) and not q[j].isspace() and q[j] not in stop:
        j += 1
    if j == i:
        raise TranslationError(f"{what}: a value is missing.")
    return _Token(q[i:j], False, j)


def _typed_value(token: _Token) -> str | float | bool:
    """A value as JSON would give it: unquoted numbers and true/false are typed."""
    if token.quoted:
        return token.text
    if token.text in ("true", "false"):
        return token.text == "true"
    number = parse_number(token.text)
    return token.text if number is None else number


def _condition(
    field: str, op: ConditionOp, value: str | float | bool | list[str | float | bool] | None
) -> str:
    try:
        cond = Condition(field=field, op=op, value=value)
    except ValidationError as exc:
        raise TranslationError(
            f"{field!r} is not a value's field: metadata.<key>, data.<column> or data "
            f"(keys up to 200 characters). {exc.errors()[0]['msg']}"
        ) from exc
    return condition_query_string(cond)


def _comparison(q: str, field: str, symbol: str, i: int) -> tuple[str, int]:
    """`field >= value`: the condition's text and where the query goes on."""
    op = _OPS[symbol]
    token = _value(q, i, "()", f"{field} {symbol}")
    # a comparison needs a number or a timestamp; the string goes to the same parsing
    # a `where` string value gets (a number or an ISO 8601 timestamp, else refused)
    return "(" + _condition(field, op, token.text) + ")", token.end


def _span(q: str, field: str, i: int) -> tuple[str, int]:
    """`field:[low TO high]` (`{` `}` exclusive, `*` open): the `gte`/`gt` and `lte`/`lt`
    conditions, both of which must hold (as two `where` conditions would)."""
    low_op = _CLOSE[q[i]]
    low = _value(q, i + 1, "]}", f"{field}:[")
    to = _SPACE.match(q, low.end).end()  # type: ignore[union-attr]
    if q[to : to + 2] != "TO" or to + 2 >= len(q) or not q[to + 2].isspace():
        raise TranslationError(f"{field}: a range is written [low TO high].")
    high = _value(q, to + 2, "]}", f"{field}:[{low.text} TO")
    close = _SPACE.match(q, high.end).end()  # type: ignore[union-attr]
    if close >= len(q) or q[close] not in _OPEN:
        raise TranslationError(f"{field}: a range ends with ] or }}.")
    parts = []
    if not (low.text == "*" and not low.quoted):
        parts.append(_condition(field, low_op, low.text))  # type: ignore[arg-type]
    if not (high.text == "*" and not high.quoted):
        parts.append(_condition(field, _OPEN[q[close]], high.text))  # type: ignore[arg-type]
    if not parts:
        parts.append(_condition(field, "exists", None))
    return "(" + " AND ".join(parts) + ")", close + 1


def _any_of(q: str, field: str, i: int) -> tuple[str, int]:
    """`field:(a OR b OR c)`: the `in` condition (values typed as in `field:value`)."""
    values: list[str | float | bool] = []
    while True:
        token = _value(q, i, "()", f"{field}:(")
        if token.text in ("AND", "NOT", "&&", "||") and not token.quoted:
            raise TranslationError(f"{field}:( … ) lists values joined by OR only.")
        if token.text != "OR" or token.quoted:
            values.append(_typed_value(token))
        i = _SPACE.match(q, token.end).end()  # type: ignore[union-attr]
        if i < len(q) and q[i] == ")":
            break
        if i >= len(q):
            raise TranslationError(f"{field}:( … ) is not closed.")
    if not values:
        raise TranslationError(f"{field}:( … ) lists no value.")
    return "(" + _condition(field, "in", values) + ")", i + 1


def _typed(q: str, i: int) -> tuple[str, int] | None:
    """A typed condition starting at `i`, as (query-string text, end), or None."""
    match = _TYPED.match(q, i)
    if match is None:
        return None
    field = match.group(0)
    compare = _COMPARE.match(q, match.end())
    if compare is not None:
        return _comparison(q, field, compare.group(1), compare.end())
    if match.end() >= len(q) or q[match.end()] != ":":
        return None  # a bare word
    j = match.end() + 1
    compare = _COMPARE.match(q, j) if j < len(q) and q[j] in "<>" else None
    if compare is not None:  # `metadata.x:>=1`, Elasticsearch's own spelling
        return _comparison(q, field, compare.group(1), compare.end())
    if "." not in field:
        return None  # `data:emea`: words
    if j < len(q) and q[j] in _CLOSE:
        return _span(q, field, j)
    if j < len(q) and q[j] == "(":
        return _any_of(q, field, j + 1)
    if j < len(q) and q[j].isspace():
        raise TranslationError(f"{field}: a value is missing.")
    token = _value(q, j, "()", f"{field}:")
    return "(" + _condition(field, "eq", _typed_value(token)) + ")", token.end


def rewrite_fields(q: str) -> str:
    """`q` with the user's field names (`data:emea`) replaced by the index's and typed
    conditions (`metadata.x >= 1`) replaced by their clause; an unknown field name is an
    error (nothing else of the index can be reached by a query)."""
    out: list[str] = []
    i, n = 0, len(q)
    in_quotes = False
    at_start = True  # at the start of a term: a field name may begin here
    while i < n:
        ch = q[i]
        if ch == "\\" and i + 1 < n:
            out.append(q[i : i + 2])
            i += 2
            at_start = False
            continue
        if ch == '"':
            in_quotes = not in_quotes
            out.append(ch)
            i += 1
            at_start = False
            continue
        if not in_quotes and at_start:
            typed = _typed(q, i)
            if typed is not None:
                out.append(typed[0])
                i = typed[1]
                at_start = False
                continue
            compare = _NAME.match(q, i)
            if compare is not None and _COMPARE.match(q, compare.end()):
                raise TranslationError(
                    f"Unknown field {compare.group(0)!r} in a comparison: only values "
                    "compare (metadata.<key>, data.<column>, data)."
                )
            match = _FIELD_PREFIX.match(q, i)
            if match:
                name = match.group(1)
                if name == "_exists_":  # `_exists_:data`: the field is the value
                    target = _TYPED.match(q, match.end())
                    if target is not None and "." in target.group(0):
                        out.append("(" + _condition(target.group(0), "exists", None) + ")")
                        i = target.end()
                        at_start = False
                        continue
                    target = _NAME.match(q, match.end())
                    if target is None:
                        raise TranslationError("_exists_: needs a field name.")
                    out.append("_exists_:" + _mapped(target.group(0)))
                    i = target.end()
                    at_start = False
                    continue
                out.append(_mapped(name) + ":")
                i = match.end()
                at_start = True  # `key:(a OR b)` and `key:value` both follow
                continue
        out.append(ch)
        at_start = not in_quotes and (ch.isspace() or ch in "()+-!")
        i += 1
    if in_quotes:
        raise TranslationError("The query has an unclosed quote.")
    return "".join(out)


def _mapped(name: str) -> str:
    if name not in QUERY_FIELDS:
        raise TranslationError(
            f"Unknown field {name!r} in the query. Searchable fields: "
            + ", ".join(sorted(QUERY_FIELDS))
            + ", and values: metadata.<key>, data.<column> (quote a value that contains "
            "a colon, e.g. a URL)."
        )
    return QUERY_FIELDS[name]


def text_query(q: str) -> Query:
    """The `query_string` clause of a user's query (AND between words by default)."""
    return {
        "query_string": {
            "query": rewrite_fields(q),
            "fields": DEFAULT_FIELDS,
            "default_operator": "AND",
            "allow_leading_wildcard": False,
            "analyze_wildcard": False,
            "fuzzy_max_expansions": 20,
            "max_determinized_states": 10_000,
        }
    }

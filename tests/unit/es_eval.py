"""A tiny in-memory evaluator of the Elasticsearch query subset the translator emits.

Used only by tests: it lets the property tests run translated queries against
Python dict documents and compare with a direct implementation of Prefect's SQL
semantics. Supported: ``bool`` (filter/must/must_not/should with
``minimum_should_match``), ``term``, ``terms``, ``exists``, ``range``,
``wildcard``, ``match_phrase`` (on whitespace-separated tokens, as the ``whitespace``
analyzer splits them), ``match_all``, ``match_none``. Dotted field names walk plain
objects; arrays match when any element matches; ``null`` and ``[]`` are absent.
"""

from __future__ import annotations

import re
from typing import Any


def field_values(doc: dict[str, Any], path: str) -> list[Any]:
    """All non-null values the document holds at a dotted path."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return []
        node = node[part]
    if node is None:
        return []
    if isinstance(node, list):
        return [v for v in node if v is not None]
    return [node]


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """Lucene wildcard syntax: ``*`` any run, ``?`` one code point, ``\\`` escapes."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                out.append(re.escape(pattern[i + 1]))
                i += 2
                continue
            out.append(re.escape("\\"))
        elif c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def wildcard_match(pattern: str, value: str) -> bool:
    """Whether a keyword value matches an ES wildcard pattern (case-sensitive)."""
    return wildcard_regex(pattern).fullmatch(value) is not None


def _has_run(tokens: list[str], wanted: list[str]) -> bool:
    """Whether `wanted` occurs in `tokens` at consecutive positions."""
    size = len(wanted)
    return size > 0 and any(tokens[i : i + size] == wanted for i in range(len(tokens) - size + 1))


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def evaluate(query: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether ``doc`` matches ``query``."""
    ((kind, body),) = query.items()
    if kind == "match_all":
        return True
    if kind == "match_none":
        return False
    if kind == "term":
        ((field, value),) = body.items()
        return any(_same(v, value) for v in field_values(doc, field))
    if kind == "terms":
        ((field, values),) = body.items()
        return any(_same(v, w) for v in field_values(doc, field) for w in values)
    if kind == "exists":
        return bool(field_values(doc, body["field"]))
    if kind == "range":
        ((field, bounds),) = body.items()
        ops = {
            "lte": lambda v, b: v <= b,
            "gte": lambda v, b: v >= b,
            "lt": lambda v, b: v < b,
            "gt": lambda v, b: v > b,
        }
        return any(all(ops[op](v, b) for op, b in bounds.items()) for v in field_values(doc, field))
    if kind == "wildcard":
        ((field, spec),) = body.items()
        return any(
            isinstance(v, str) and wildcard_match(spec["value"], v)
            for v in field_values(doc, field)
        )
    if kind == "match_phrase":
        ((field, phrase),) = body.items()
        wanted = phrase.split()
        return any(
            isinstance(v, str) and _has_run(v.split(), wanted) for v in field_values(doc, field)
        )
    if kind == "bool":
        unknown = set(body) - {"filter", "must", "must_not", "should", "minimum_should_match"}
        assert not unknown, unknown
        for clause in body.get("filter", []) + body.get("must", []):
            if not evaluate(clause, doc):
                return False
        for clause in body.get("must_not", []):
            if evaluate(clause, doc):
                return False
        should = body.get("should", [])
        if should:
            default = 0 if ("filter" in body or "must" in body) else 1
            needed = int(body.get("minimum_should_match", default))
            if sum(evaluate(c, doc) for c in should) < needed:
                return False
        return True
    raise AssertionError(f"unsupported query kind {kind}")

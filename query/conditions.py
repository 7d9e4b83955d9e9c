"""PURE: typed conditions on the values inside artifacts (docs/search.md, "Values").

One condition (`metadata.accuracy gte 0.9`) becomes one filter on the `v` object's keyword
terms (`key\\x00encoded value`, services/search_text.py). Both ways of writing a condition
use this one builder: the `where` list of a search request, and a comparison inside the
query string (`metadata.accuracy >= 0.9`, query/query_string.py), which renders the same
clause in query-string syntax (`render_clause`), so the two mean the same thing.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from query.translate import Query, epoch_us
from services.errors import TranslationError
from services.search_text import (
    MAX_KEY_CHARS,
    SEP,
    encode_micros,
    encode_number,
    parse_micros,
    parse_number,
)

ConditionOp = Literal["eq", "in", "gt", "gte", "lt", "lte", "exists"]


class Condition(BaseModel):
    """A typed condition on a value of `metadata` or `data` (docs/search.md, "Values")."""

    model_config = ConfigDict(extra="forbid")
    field: str = Field(
        min_length=4,
        max_length=MAX_KEY_CHARS,
        pattern=r"^(metadata|data)(\.[^\x00]+)?$",
        description="`metadata.<key>`, `data` (a progress value), `data.<column>` of a "
        "table or `data.<path>` of JSON data",
    )
    op: ConditionOp
    value: str | float | bool | AwareDatetime | list[str | float | bool] | None = Field(
        None,
        description="a string, number, boolean or timestamp (`gt`..`lte`: a number or a "
        "timestamp); a list for `in`; nothing for `exists`",
    )


def _term(kind: str, key: str, value: str | float | bool | datetime) -> Query:
    return {"term": {f"v.{kind}": f"{key}{SEP}{_encoded(kind, value)}"}}


def _kind(value: str | float | bool | datetime) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int | float):
        return "n"
    if isinstance(value, datetime):
        return "d"
    return "s"


def _encoded(kind: str, value: str | float | bool | datetime) -> str:
    if kind == "b":
        return "true" if value else "false"
    if kind == "n":
        assert isinstance(value, int | float)
        if not math.isfinite(value):
            raise TranslationError("Numbers in conditions must be finite.")
        return encode_number(value)
    if kind == "d":
        assert isinstance(value, datetime)
        return encode_micros(epoch_us(value))
    return str(value)


_RANGE_OPS = {"gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}


def condition_clause(cond: Condition) -> Query:
    """The filter of one typed condition (terms of the `v` object)."""
    key, value = cond.field, cond.value
    if cond.op == "exists":
        if value is not None:
            raise TranslationError(f"{key}: `exists` takes no value.")
        return {"term": {"v.k": key}}
    if cond.op == "in":
        if not isinstance(value, list) or not value:
            raise TranslationError(f"{key}: `in` takes a non-empty list of values.")
        return {
            "bool": {"should": [_term(_kind(v), key, v) for v in value], "minimum_should_match": 1}
        }
    if value is None or isinstance(value, list):
        raise TranslationError(f"{key}: `{cond.op}` takes one value.")
    if cond.op == "eq":
        return _term(_kind(value), key, value)
    kind = _kind(value)
    if kind == "s":  # JSON has no timestamps: a string that spells one, or a number
        assert isinstance(value, str)
        micros, number = parse_micros(value), parse_number(value)
        if micros is not None:
            kind, encoded = "d", encode_micros(micros)
        elif number is not None:
            kind, encoded = "n", encode_number(number)
        else:
            raise TranslationError(
                f"{key}: `{cond.op}` compares numbers or timestamps, not {value!r}."
            )
    else:
        encoded = _encoded(kind, value)
    if kind == "b":
        raise TranslationError(f"{key}: `{cond.op}` compares numbers or timestamps.")
    bound = f"{key}{SEP}{encoded}"
    # every term of this key lies between `key\x00` and `key\x01`
    lower, upper = {"gte": f"{key}{SEP}"}, {"lt": f"{key}\x01"}
    edge = {_RANGE_OPS[cond.op]: bound}
    span = {**upper, **edge} if cond.op in ("gt", "gte") else {**lower, **edge}
    return {"range": {f"v.{kind}": span}}


# -- the same clause in query-string syntax ---------------------------------------------------
def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_clause(clause: Query) -> str:
    """A clause of `condition_clause` in Lucene's query-string syntax, meaning the same:
    a term as `field:"value"`, a range as `field:[lower TO upper}` (brackets by the bounds'
    inclusiveness), a `should` list as `(a OR b)`. Values are quoted, so no character of a
    key or value is read as syntax."""
    if set(clause) == {"term"}:
        ((field, value),) = clause["term"].items()
        return f"{field}:{_quoted(value)}"
    if set(clause) == {"range"}:
        ((field, bounds),) = clause["range"].items()
        low_op = "gte" if "gte" in bounds else "gt"
        high_op = "lte" if "lte" in bounds else "lt"
        if set(bounds) != {low_op, high_op}:
            raise ValueError(f"not a two-sided range: {bounds!r}")
        low = "[" if low_op == "gte" else "{"
        high = "]" if high_op == "lte" else "}"
        return f"{field}:{low}{_quoted(bounds[low_op])} TO {_quoted(bounds[high_op])}{high}"
    if set(clause) == {"bool"} and set(clause["bool"]) == {"should", "minimum_should_match"}:
        return "(" + " OR ".join(render_clause(c) for c in clause["bool"]["should"]) + ")"
    raise ValueError(f"not a clause of condition_clause: {clause!r}")


def condition_query_string(cond: Condition) -> str:
    """The query-string text of one condition: the `where` clause, rendered."""
    return render_clause(condition_clause(cond))

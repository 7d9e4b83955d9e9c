"""The fast path (msgspec) accepts only what the full parser (pydantic) accepts, and then
gives the same event: same op, version, event id and, built into documents, same fields."""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import services.contract as contract
from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import MOVING, dataset_records
from services.contract import parse_record
from services.contract_fast import _left_to_pydantic
from services.documents import artifact_own_fields, entity_part
from services.errors import PoisonEventError

DATASET = generate_dataset(17, DatasetScale.tiny())
RECORDS = [r for r in dataset_records(DATASET, 17, MOVING) if r[2] is not None]


def _slow(entity: str, key: bytes, value: bytes) -> Any:
    fast = contract._parse_valid
    contract._parse_valid = lambda *_: None  # type: ignore[assignment]
    try:
        return parse_record(entity, key, value)
    finally:
        contract._parse_valid = fast  # type: ignore[assignment]


def _built(event: Any) -> Any:
    if event.data is None:
        return None
    if event.entity == "artifact":
        return artifact_own_fields(event.data, event.version)
    return entity_part(event.data)


def _same(entity: str, key: bytes, value: bytes) -> bool:
    """Whether the fast path took the record (and, if so, agreed with the full parser)."""
    fast = contract._parse_valid(entity, key.decode("utf-8", "replace"), value)
    if fast is None:
        return False
    slow = _slow(entity, key, value)  # raises if the full parser rejects it
    assert (fast.op, fast.version, str(fast.event_id)) == (slow.op, slow.version, slow.event_id)
    assert _built(fast) == _built(slow)
    return True


def test_every_generated_record_takes_the_fast_path() -> None:
    assert all(_same(e, k, v) for e, k, v in RECORDS)


def _artifact_with(**fields: Any) -> tuple[str, bytes, bytes]:
    entity, key, value = next(r for r in RECORDS if r[0] == "artifact" and b'"upsert"' in r[2])
    envelope = orjson.loads(value)
    envelope["data"].update(fields)
    return entity, key, orjson.dumps(envelope)


@pytest.mark.parametrize("value", [33.3333333, 0.123456789, 1 / 3])
def test_a_long_decimal_in_data_keeps_the_fast_path(value: float) -> None:
    """Only a time's fraction of more than 6 digits needs the full parser, not any number."""
    entity, key, raw = _artifact_with(type="progress", data=value)
    assert _same(entity, key, raw)


@pytest.mark.parametrize(
    "created",
    [
        "2024-01-02T03:04:05.1234567Z",
        "2024-01-02T03:04:05\\u002e1234567Z",  # an escaped dot
        "2024-01-02T03:04:05.\\u00312345678Z",  # an escaped digit
        "2024-01-02T03:04\\u003a05.1234567Z",  # an escaped colon
    ],
)
def test_a_long_time_fraction_is_truncated_as_the_full_parser_does(created: str) -> None:
    """msgspec would round these fractions (…457), pydantic truncates them (…456): the fast
    path must leave them to the full parser, even when JSON escapes hide the fraction."""
    entity, key, value = _artifact_with(created="PLACEHOLDER")
    raw = value.replace(b"PLACEHOLDER", created.encode())
    assert not _same(entity, key, raw)
    event = _slow(entity, key, raw)
    assert _built(event)["created"].startswith("2024-01-02T03:04:05.123456")


TIMES = [
    "2024-01-02T03:04:05Z",
    "2024-01-02T03:04:05.5Z",
    "2024-01-02T03:04:05.123456Z",
    "2024-01-02T03:04:05.123456789Z",
    "2024-01-02T03:04:05+02:00",
    "2024-01-02T03:04:05-11:30",
    "2024-01-02T03:04:05",
    "2024-01-02t03:04:05z",
    "2024-01-02 03:04:05Z",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-05:00",
    "2024-02-30T00:00:00Z",
    1704164645,
    "",
]
ODD_VALUES = [None, 1, -1, 1.5, "x", True, [], {}, ["a"], {"a": 1}, "A" * 10]


def _mutations(data: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    out = dict(data)
    for _ in range(rng.randint(1, 3)):
        field = rng.choice([*sorted(out), "extra"])
        roll = rng.random()
        if field in ("created", "updated", "start_time", "end_time") or roll < 0.25:
            out[field] = rng.choice(TIMES)
        elif field.endswith("id") and isinstance(out.get(field), str) and roll < 0.6:
            out[field] = rng.choice([out[field].upper(), "{" + out[field] + "}", out[field][:-1]])
        else:
            out[field] = rng.choice(ODD_VALUES)
    return out


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, len(RECORDS) - 1), seed=st.integers(0, 2**32))
def test_mutated_records_agree_or_fall_back(index: int, seed: int) -> None:
    rng = random.Random(seed)
    entity, key, value = RECORDS[index]
    envelope = orjson.loads(value)
    if envelope.get("data") and rng.random() < 0.8:
        envelope["data"] = _mutations(envelope["data"], rng)
    else:
        envelope = _mutations(envelope, rng)
    raw = orjson.dumps(envelope)
    try:
        _same(entity, key, raw)
    except PoisonEventError as exc:  # the fast path took what the full parser rejects
        pytest.fail(f"fast path accepted a record the full parser rejects: {exc}")


_BY_DEFINITION = re.compile(rb"[0-9]:[0-9]{2}\.[0-9]{7}|\\u00[0-7]")
"""What the fast path leaves to pydantic, written as plainly as possible."""


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from([b"0", b"7", b"9", b":", b".", b"\\", b"u", b"8", b"a"]), max_size=40)
)
def test_the_fast_prefilter_is_the_plain_pattern(parts: list[bytes]) -> None:
    value = b"".join(parts)
    assert _left_to_pydantic(value) == (_BY_DEFINITION.search(value) is not None), value


def test_the_fast_prefilter_on_examples() -> None:
    for value, left in (
        (b'"2024-01-01T00:00:00.1234567Z"', True),
        (b'"2024-01-01T00:00:00.123456Z"', False),
        (b'"progress": 33.3333333', False),
        (b"a:12.1234567", False),
        (b"9:99.12345678", True),
        (b"\\u002e", True),
        (b"\\u0080", False),
    ):
        assert _left_to_pydantic(value) is left, value

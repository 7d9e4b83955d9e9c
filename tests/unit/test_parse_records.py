"""Pure record parsing and the timestamp and text encodings of the documents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.contract import encode_event, parse_record
from services.documents import ascii_lower, format_timestamp, to_micros
from services.errors import PoisonEventError

FR = str(uuid.uuid4())
FLOW = str(uuid.uuid4())


def run(version: int, **kw: Any) -> bytes:
    data = {
        "id": FR,
        "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-01T00:00:00Z",
        "name": "r",
        "flow_id": FLOW,
        **kw,
    }
    return encode_event("flow_run", FR, "upsert", version, data)


def test_timestamps_follow_prefects_json_form() -> None:
    assert format_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"
    assert (
        format_timestamp(datetime(2024, 1, 2, 3, 4, 5, 120, tzinfo=UTC))
        == "2024-01-02T03:04:05.000120Z"
    )
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


@settings(max_examples=2000, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offset_min=st.integers(min_value=-23 * 60, max_value=23 * 60),
    whole=st.booleans(),
)
def test_timestamps_are_what_isoformat_writes(
    moment: datetime, offset_min: int, whole: bool
) -> None:
    """The fast path (msgspec's RFC 3339 writer) against the plain definition, with zero
    and non-zero microseconds, any offset, naive-free."""
    if whole:
        moment = moment.replace(microsecond=0)
    for aware in (
        moment.replace(tzinfo=UTC),
        moment.replace(tzinfo=timezone(timedelta(minutes=offset_min))),
    ):
        want = aware.astimezone(UTC).isoformat()[:-6] + "Z"
        assert format_timestamp(aware) == want


def test_ascii_lower_folds_only_ascii() -> None:
    assert ascii_lower("ÄbC-Ü") == "Äbc-Ü"


@pytest.mark.parametrize(
    ("entity", "key", "value", "reason"),
    [
        ("flow_run", FR.encode(), b"{nope", "invalid_json"),
        ("flow_run", b"XYZ", run(1), "invalid_key"),
        ("flow_run", FR.upper().encode(), run(1), "invalid_key"),
        ("flow", FR.encode(), run(1), "entity_mismatch"),
        ("flow_run", str(uuid.uuid4()).encode(), run(1), "key_mismatch"),
        ("flow_run", FR.encode(), run(1, tags="not-a-list"), "invalid_data"),
        ("flow_run", FR.encode(), b'{"op": "upsert"}', "invalid_envelope"),
        ("flow_run", FR.encode(), b"\xff\xfe", "invalid_json"),
        ("flow_run", None, run(1), "missing_key"),
    ],
)
def test_poison_records_name_their_reason(
    entity: str, key: bytes | None, value: bytes, reason: str
) -> None:
    with pytest.raises(PoisonEventError) as info:
        parse_record(entity, key, value)
    assert info.value.reason == reason


def test_float_versions_are_rejected() -> None:
    raw = run(1).replace(b'"version":1', b'"version":1.5')
    with pytest.raises(PoisonEventError):
        parse_record("flow_run", FR.encode(), raw)

"""Decoding member records: what is accepted and refused (the fast path for canonical ids
must accept and refuse exactly what `uuid.UUID` does)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from indexer.collections import Member

AID = str(uuid.uuid4())


def record(**kw: Any) -> dict[str, Any]:
    return {"k": "key", "a": AID, "o": 3, "l": True, "p": {"id": AID}, **kw}


def test_a_member_record_round_trips() -> None:
    member = Member("key", AID, 3, True, {"id": AID})
    assert Member.decode(member.encode()) == member
    assert Member.decode(record(l=False)) == Member("key", AID, 3, False, None)


@pytest.mark.parametrize(
    "artifact_id", [AID.upper(), "{" + AID + "}", AID.replace("-", ""), "urn:uuid:" + AID]
)
def test_other_spellings_of_a_uuid_are_accepted_as_before(artifact_id: str) -> None:
    assert Member.decode(record(a=artifact_id)).artifact_id == artifact_id


@pytest.mark.parametrize(
    "value",
    [
        [],
        record(a="not-a-uuid"),
        record(a=AID[:-1] + "g"),
        record(a=AID + "0"),
        record(a=None),
        record(k=1),
        record(o="3"),
        record(l=1),
        record(p=None),
    ],
)
def test_malformed_member_records_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        Member.decode(value)

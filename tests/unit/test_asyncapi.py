"""The checked-in AsyncAPI document matches what the code generates."""

from __future__ import annotations

import json

from indexer.app import asyncapi_json
from indexer.asyncapi import DEFAULT_PATH


def test_checked_in_asyncapi_matches_the_code() -> None:
    assert DEFAULT_PATH.read_text() == asyncapi_json(), (
        "docs/asyncapi.json is stale: run `python -m indexer.asyncapi`"
    )


def test_asyncapi_documents_every_topic_with_its_envelope() -> None:
    spec = json.loads(asyncapi_json())
    addresses = {c["address"] for c in spec["channels"].values()}
    assert addresses == {
        "prefect.flows",
        "prefect.deployments",
        "prefect.flow-runs",
        "prefect.task-runs",
        "prefect.artifacts",
        "prefect.dlq",
        "prefect.indexer.collection-members",
    }
    schemas = spec["components"]["schemas"]
    assert "FlowRunEvent" in schemas and "FlowRunData" in schemas
    assert set(schemas["FlowRunEvent"]["required"]) >= {"event_id", "op", "entity_id", "version"}


def test_member_record_schema_names_every_field_the_indexer_writes() -> None:
    from indexer.app import MemberRecord
    from indexer.collections import Member

    encoded = Member("k", "a", 1, True, {"x": 1}).encode()
    assert set(MemberRecord.model_fields) == set(encoded)
    assert MemberRecord.model_validate(encoded).p == {"x": 1}

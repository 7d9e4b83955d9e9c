"""Poison records through the real broker and the real (in-process) Indexer.

Every poison record sits between two valid events on the same topic and partition.
Each must reach the dead-letter topic with the right ``dlq.reason``, its original key,
value and headers, and be counted by ``indexer_dead_letters_total``; or, where the
contract says so, be a harmless no-op. Every valid event around it must be applied
(checked through the query API), none twice.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.contract import MAX_INDEXED_STRING_BYTES, parse_record
from services.errors import PoisonEventError
from tests.reliability.conftest import MAX_EVENT_BYTES, Produced, Stack, wait_until

TS = "2024-01-01T00:00:00Z"
MAX_VERSION = 2**63 - 1


def _id() -> str:
    return str(uuid.uuid4())


def envelope(
    entity: str, entity_id: str, data: Any, version: Any = 1, op: str = "upsert", **extra: Any
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "event_id": _id(),
        "op": op,
        "entity": entity,
        "entity_id": entity_id,
        "version": version,
        "occurred": TS,
        "data": data,
    }
    env.update(extra)
    return env


def artifact_data(artifact_id: str, key: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": artifact_id,
        "created": TS,
        "updated": TS,
        "key": key,
        "type": "markdown",
        "data": "x",
        **extra,
    }


def dumps(value: Any) -> bytes:
    """Compact JSON; the stdlib encoder, because it also writes integers beyond 64 bits."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Case:
    """One poison (or no-op) record; `reason` None means: not dead-lettered."""

    name: str
    entity: str
    key: bytes | None
    value: bytes | None
    reason: str | None
    headers: tuple[tuple[str, bytes], ...] = ()


def _artifact_case(name: str, reason: str | None, build: Any) -> Case:
    """A case on the artifact topic keyed by a fresh id; `build(id)` gives the value."""
    aid = _id()
    value = build(aid)
    return Case(name, "artifact", aid.encode(), value, reason)


def poison_cases() -> list[Case]:
    """Every input class of the issue, each with its expected reason."""
    cases: list[Case] = []
    add = cases.append

    # -- not JSON / not an object ---------------------------------------------------------
    add(_artifact_case("malformed_json", "invalid_json", lambda i: b'{"op": "upsert", "ent'))
    add(_artifact_case("empty_value", "invalid_json", lambda i: b""))
    add(_artifact_case("json_array", "invalid_envelope", lambda i: b"[1, 2, 3]"))
    add(_artifact_case("json_null_literal", "invalid_envelope", lambda i: b"null"))
    add(_artifact_case("json_string", "invalid_envelope", lambda i: b'"upsert"'))
    add(
        _artifact_case(
            "non_utf8_value",
            "invalid_json",
            lambda i: b"\xff\xfe" + dumps(envelope("artifact", i, artifact_data(i, "k"))),
        )
    )
    add(
        _artifact_case(
            "non_utf8_inside_string",
            "invalid_json",
            lambda i: dumps(envelope("artifact", i, artifact_data(i, "KEY"))).replace(
                b'"KEY"', b'"K\xc3\x28Y"'
            ),
        )
    )
    add(
        _artifact_case(
            "lone_surrogate_escape",
            "invalid_json",
            lambda i: dumps(envelope("artifact", i, artifact_data(i, "KEY"))).replace(
                b'"KEY"', b'"\\ud800"'
            ),
        )
    )
    add(
        _artifact_case(
            "nan_literal",
            "invalid_json",
            lambda i: dumps(envelope("artifact", i, artifact_data(i, "k"), version=7)).replace(
                b'"version":7', b'"version":NaN'
            ),
        )
    )
    add(
        _artifact_case(
            "json_too_deep",
            "invalid_json",
            lambda i: dumps(envelope("artifact", i, artifact_data(i, "k"))).replace(
                b'"data":"x"', b'"data":' + b"[" * 1100 + b"]" * 1100
            ),
        )
    )

    # -- wrong types ----------------------------------------------------------------------
    for name, field_name, bad in [
        ("op_wrong_type", "op", 5),
        ("op_unknown", "op", "merge"),
        ("event_id_wrong_type", "event_id", 123),
        ("occurred_wrong_type", "occurred", "yesterday"),
        ("data_wrong_type", "data", "a string"),
        ("data_list", "data", [1, 2]),
    ]:
        add(
            _artifact_case(
                name,
                "invalid_envelope",
                lambda i, f=field_name, b=bad: dumps(
                    {**envelope("artifact", i, artifact_data(i, "k")), f: b}
                ),
            )
        )
    for name, field_name, bad in [
        ("data_created_wrong_type", "created", "not a date"),
        ("data_key_wrong_type", "key", 42),
        ("data_metadata_wrong_type", "metadata_", {"a": 1}),
        ("data_flow_run_id_not_uuid", "flow_run_id", "run-1"),
    ]:
        add(
            _artifact_case(
                name,
                "invalid_data",
                lambda i, f=field_name, b=bad: dumps(
                    envelope("artifact", i, {**artifact_data(i, "k"), f: b})
                ),
            )
        )

    # timestamps that overflow once converted to UTC (used to escape as OverflowError)
    add(
        _artifact_case(
            "occurred_overflows_utc",
            "invalid_envelope",
            lambda i: dumps(
                {
                    **envelope("artifact", i, artifact_data(i, "k")),
                    "occurred": "9999-12-31T23:59:59-05:00",
                }
            ),
        )
    )
    add(
        _artifact_case(
            "data_created_underflows_utc",
            "invalid_data",
            lambda i: dumps(
                envelope("artifact", i, artifact_data(i, "k", created="0001-01-01T00:00:00+05:00"))
            ),
        )
    )

    # -- missing required fields ----------------------------------------------------------
    for missing in ("event_id", "op", "entity", "entity_id", "version", "occurred"):
        add(
            _artifact_case(
                f"missing_{missing}",
                "invalid_envelope",
                lambda i, m=missing: dumps(
                    {
                        k: v
                        for k, v in envelope("artifact", i, artifact_data(i, "k")).items()
                        if k != m
                    }
                ),
            )
        )
    add(
        _artifact_case(
            "upsert_without_data",
            "invalid_data",
            lambda i: dumps({**envelope("artifact", i, None), "data": None}),
        )
    )
    for missing in ("id", "created", "updated"):
        add(
            _artifact_case(
                f"missing_data_{missing}",
                "invalid_data",
                lambda i, m=missing: dumps(
                    envelope(
                        "artifact", i, {k: v for k, v in artifact_data(i, "k").items() if k != m}
                    )
                ),
            )
        )
    flow_id = _id()
    add(
        Case(
            "flow_missing_name",
            "flow",
            flow_id.encode(),
            dumps(envelope("flow", flow_id, {"id": flow_id, "created": TS, "updated": TS})),
            "invalid_data",
        )
    )

    # -- invalid UUIDs ----------------------------------------------------------------------
    good = _id()
    good_value = dumps(envelope("artifact", good, artifact_data(good, "k")))
    add(Case("key_not_uuid", "artifact", b"not-a-uuid", good_value, "invalid_key"))
    add(Case("key_uppercase_uuid", "artifact", good.upper().encode(), good_value, "invalid_key"))
    add(Case("key_braced_uuid", "artifact", b"{" + good.encode() + b"}", good_value, "invalid_key"))
    add(Case("key_non_utf8", "artifact", b"\xff\xfe\xfd", good_value, "invalid_key"))
    add(Case("key_missing", "artifact", None, good_value, "missing_key"))
    add(Case("key_empty", "artifact", b"", good_value, "invalid_key"))
    add(
        _artifact_case(
            "entity_id_not_uuid",
            "invalid_envelope",
            lambda i: dumps({**envelope("artifact", i, artifact_data(i, "k")), "entity_id": "x"}),
        )
    )
    add(
        _artifact_case(
            "data_id_not_uuid",
            "invalid_data",
            lambda i: dumps(envelope("artifact", i, artifact_data("nope", "k"))),
        )
    )

    # -- key / entity_id / data.id / topic mismatches ----------------------------------------
    other = _id()
    add(
        _artifact_case(
            "entity_id_differs_from_key",
            "key_mismatch",
            lambda i: dumps(envelope("artifact", other, artifact_data(other, "k"))),
        )
    )
    add(
        _artifact_case(
            "data_id_differs_from_key",
            "id_mismatch",
            lambda i: dumps(envelope("artifact", i, artifact_data(_id(), "k"))),
        )
    )
    art_on_flow = _id()
    add(
        Case(
            "artifact_on_flow_topic",
            "flow",
            art_on_flow.encode(),
            dumps(envelope("artifact", art_on_flow, artifact_data(art_on_flow, "k"))),
            "entity_mismatch",
        )
    )
    flow_on_art = _id()
    add(
        Case(
            "flow_on_artifact_topic",
            "artifact",
            flow_on_art.encode(),
            dumps(
                envelope(
                    "flow",
                    flow_on_art,
                    {"id": flow_on_art, "created": TS, "updated": TS, "name": "f"},
                )
            ),
            "entity_mismatch",
        )
    )
    add(
        _artifact_case(
            "unknown_entity_name",
            "invalid_envelope",
            lambda i: dumps({**envelope("artifact", i, artifact_data(i, "k")), "entity": "widget"}),
        )
    )

    # -- sizes ----------------------------------------------------------------------------------
    add(
        _artifact_case(
            "oversized_value",
            "oversized",
            lambda i: dumps(
                envelope("artifact", i, artifact_data(i, "k", description="d" * MAX_EVENT_BYTES))
            ),
        )
    )
    add(
        _artifact_case(
            "artifact_key_immense_term",
            "value_too_large",
            lambda i: dumps(envelope("artifact", i, artifact_data(i, "k" * 40_000))),
        )
    )
    add(
        _artifact_case(
            "artifact_data_too_deep",
            "too_deep",
            lambda i: dumps(envelope("artifact", i, artifact_data(i, "k", data="DEEP"))).replace(
                b'"DEEP"', b"[" * 300 + b"]" * 300
            ),
        )
    )
    flow_big = _id()
    add(
        Case(
            "flow_name_immense_term",
            "flow",
            flow_big.encode(),
            dumps(
                envelope(
                    "flow",
                    flow_big,
                    {"id": flow_big, "created": TS, "updated": TS, "name": "é" * 20_000},
                )
            ),
            "value_too_large",
        )
    )

    # -- versions ---------------------------------------------------------------------------------
    for name, version in [
        ("version_2_pow_63", 2**63),
        ("version_2_pow_64", 2**64),
        ("version_negative", -1),
        ("version_float", 1.0),
        ("version_float_fraction", 1.5),
        ("version_string", "1"),
        ("version_bool", True),
        ("version_null", None),
    ]:
        add(
            _artifact_case(
                name,
                "invalid_envelope",
                lambda i, v=version: dumps(envelope("artifact", i, artifact_data(i, "k"), v)),
            )
        )
    add(
        _artifact_case(
            "version_huge_literal",
            "invalid_json",  # 10**400 overflows a double: orjson refuses it
            lambda i: dumps(envelope("artifact", i, artifact_data(i, "k"), 7)).replace(
                b'"version":7', b'"version":' + b"9" * 400
            ),
        )
    )

    # -- tombstones -------------------------------------------------------------------------------
    add(Case("tombstone_unknown_artifact", "artifact", _id().encode(), None, None))
    add(Case("tombstone_unknown_flow", "flow", _id().encode(), None, None))
    add(Case("tombstone_invalid_key", "artifact", b"definitely-not-a-uuid", None, "invalid_key"))
    add(Case("delete_unknown_artifact", "artifact", *_delete_unknown(), None))

    # -- headers -------------------------------------------------------------------------------
    bad_header = (("trace", b"\xff\xfe\x00binary"), ("ok", b"plain"))
    add(
        Case(
            "poison_with_non_utf8_header",
            "artifact",
            _id().encode(),
            b"{broken",
            "invalid_json",
            bad_header,
        )
    )
    return cases


def _delete_unknown() -> tuple[bytes, bytes]:
    aid = _id()
    return aid.encode(), dumps(envelope("artifact", aid, None, version=3, op="delete"))


# ------------------------------------------------------------------------------------------
# valid fillers around each case, and probes of their effects through the query API
# ------------------------------------------------------------------------------------------
@dataclass
class Plan:
    records: list[Produced]
    artifact_keys: dict[str, str]  # artifact id -> key it must end with
    flow_names: list[str]  # flows that must be applied (probed through linked artifacts)


def build_plan(cases: list[Case], run: str, extras: bool = True) -> Plan:
    plan = Plan([], {}, [])
    counter = iter(range(10**6))

    def filler(entity: str) -> list[Produced]:
        n = next(counter)
        if entity == "artifact":
            aid = _id()
            key = f"{run}-ok-{n}"
            plan.artifact_keys[aid] = key
            value = dumps(envelope("artifact", aid, artifact_data(aid, key)))
            return [Produced("artifact", aid.encode(), value)]
        fid, rid, aid = _id(), _id(), _id()
        name = f"{run}-flow-{n}"
        plan.flow_names.append(name)
        plan.artifact_keys[aid] = f"{run}-via-flow-{n}"
        flow = {"id": fid, "created": TS, "updated": TS, "name": name}
        fr = {"id": rid, "created": TS, "updated": TS, "name": f"r{n}", "flow_id": fid}
        art = artifact_data(aid, f"{run}-via-flow-{n}", flow_run_id=rid)
        return [
            Produced("flow", fid.encode(), dumps(envelope("flow", fid, flow))),
            Produced("flow_run", rid.encode(), dumps(envelope("flow_run", rid, fr))),
            Produced("artifact", aid.encode(), dumps(envelope("artifact", aid, art))),
        ]

    for case in cases:
        plan.records += filler(case.entity)
        plan.records.append(Produced(case.entity, case.key, case.value, case.headers))
        plan.records += filler(case.entity)
    if not extras:
        return plan

    # a valid event with a non-UTF-8 header is applied, not dead-lettered
    aid = _id()
    plan.artifact_keys[aid] = f"{run}-binary-header"
    plan.records.append(
        Produced(
            "artifact",
            aid.encode(),
            dumps(envelope("artifact", aid, artifact_data(aid, f"{run}-binary-header"))),
            (("trace", b"\x80\x81\xfe"),),
        )
    )
    # 2**63-1 is a valid version and wins; an older version after it is stale (no-op)
    vid = _id()
    plan.artifact_keys[vid] = f"{run}-version-max"
    for version, key in [
        (5, f"{run}-version-5"),
        (MAX_VERSION, f"{run}-version-max"),
        (MAX_VERSION - 1, f"{run}-version-stale"),
    ]:
        value = dumps(envelope("artifact", vid, artifact_data(vid, key), version))
        plan.records.append(Produced("artifact", vid.encode(), value))
    # ... and a poison version for the same entity afterwards changes nothing
    for version in (2**64, -5):
        value = dumps(envelope("artifact", vid, artifact_data(vid, f"{run}-bad"), version))
        plan.records.append(Produced("artifact", vid.encode(), value))
    plan.records += filler("artifact")
    return plan


def dlq_total() -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "indexer_dead_letters":
            for sample in metric.samples:
                if sample.name == "indexer_dead_letters_total":
                    out[sample.labels["reason"]] = sample.value
    return out


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------
def test_every_poison_case_is_classified_by_the_parser() -> None:
    """The parser alone (no servers) agrees with the expected reason of every case."""
    for case in poison_cases():
        if case.reason in ("oversized", None):
            continue
        with pytest.raises(PoisonEventError) as info:
            parse_record(case.entity, case.key, case.value)
        assert info.value.reason == case.reason, case.name
    # a tombstone without a key cannot even be produced (clients refuse it); the parser
    # dead-letters it all the same
    with pytest.raises(PoisonEventError, match="missing_key"):
        parse_record("artifact", None, None)


def test_indexed_string_bound_is_below_the_lucene_term_limit() -> None:
    assert MAX_INDEXED_STRING_BYTES <= 32_766
    aid = _id()
    ok = artifact_data(aid, "k" * MAX_INDEXED_STRING_BYTES)
    parse_record("artifact", aid.encode(), dumps(envelope("artifact", aid, ok)))
    too_big = artifact_data(aid, "k" * (MAX_INDEXED_STRING_BYTES + 1))
    with pytest.raises(PoisonEventError) as info:
        parse_record("artifact", aid.encode(), dumps(envelope("artifact", aid, too_big)))
    assert info.value.reason == "value_too_large"
    assert "key" in info.value.detail


async def test_poison_records_are_dead_lettered_and_valid_neighbours_applied(
    poison_stack: Stack,
) -> None:
    stack = poison_stack
    run = uuid.uuid4().hex[:8]
    cases = poison_cases()
    plan = build_plan(cases, run)
    extra_poison = 2  # the two bad versions of the version-max artifact
    expected_dlq = sum(1 for c in cases if c.reason is not None) + extra_poison
    before = dlq_total()

    await stack.publish(plan.records)

    # every valid artifact is there, exactly once, with the content of its last valid version
    ids = sorted(plan.artifact_keys)
    body = {"artifacts": {"id": {"any_": ids}}}
    count = await wait_until(stack.client, "/api/artifacts/count", body, len(ids), 120)
    assert count == len(ids), f"{count} of {len(ids)} valid artifacts applied"
    rows = (await stack.client.post("/api/artifacts/filter", json={**body, "limit": 200})).json()
    assert len(rows) == len(ids) == len({r["id"] for r in rows})
    assert {r["id"]: r["key"] for r in rows} == plan.artifact_keys
    # valid flows around flow-topic poison are applied (seen through their linked artifacts)
    flows_body = {"flows": {"name": {"any_": plan.flow_names}}}
    want_flows = len(plan.flow_names)
    got = await wait_until(stack.client, "/api/artifacts/count", flows_body, want_flows, 60)
    assert got == want_flows
    # nothing else reached the index: no poison was applied, no tombstone created anything
    assert (await stack.client.post("/api/artifacts/count", json={})).json() == len(ids)

    # dead letters: right reason, original key/value/headers, source coordinates
    dead = await stack.read_dlq(expected_dlq, 60)
    assert len(dead) == expected_dlq, f"{len(dead)} dead letters, expected {expected_dlq}"
    by_value: dict[tuple[bytes | None, bytes | None], list[Any]] = {}
    for msg in dead:
        by_value.setdefault((msg.key, msg.value), []).append(msg)
    reasons: Counter[str] = Counter()
    for case in cases:
        if case.reason is None:
            assert (case.key, case.value) not in by_value, case.name
            continue
        found = by_value.get((case.key, case.value))
        assert found, f"{case.name}: not dead-lettered with its original key and value"
        msg = found.pop(0)
        headers = dict(msg.headers)
        assert headers["dlq.reason"].decode() == case.reason, case.name
        assert headers["dlq.topic"].decode() == stack.kafka.topic_for(case.entity), case.name
        assert int(headers["dlq.partition"]) == 0
        assert int(headers["dlq.offset"]) >= 0
        assert headers["dlq.detail"], case.name
        for name, value in case.headers:
            assert headers[f"original.{name}"] == value, f"{case.name}: header {name}"
        reasons[case.reason] += 1
    reasons["invalid_envelope"] += extra_poison

    after = dlq_total()
    delta = {r: after.get(r, 0.0) - before.get(r, 0.0) for r in after}
    assert {r: int(v) for r, v in delta.items() if v} == dict(reasons)

    summary = {
        "cases": len(cases),
        "poison_classes": sorted({c.name for c in cases if c.reason}),
        "noop_classes": sorted({c.name for c in cases if c.reason is None}),
        "records_produced": len(plan.records),
        "valid_artifacts_expected": len(ids),
        "valid_artifacts_indexed": len(rows),
        "valid_flows_expected": want_flows,
        "dead_lettered": len(dead),
        "dead_letter_metric_delta": int(sum(delta.values())),
        "by_reason": dict(sorted(reasons.items())),
    }
    if path := os.environ.get("RELIABILITY_REPORT"):
        with Path(path).open("a", encoding="utf-8") as out:  # noqa: ASYNC230 (tiny, once)
            out.write(json.dumps({"poison": summary}) + "\n")
    print(json.dumps(summary, indent=1))


def retries_total() -> float:
    return REGISTRY.get_sample_value("indexer_batch_retries_total") or 0.0


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


PERMANENT_WRITE_FAILURES = {
    # Lucene's term limit: Elasticsearch answers 400 `immense term` for ever
    "artifact_key_immense_term": lambda i: dumps(
        envelope("artifact", i, artifact_data(i, "k" * 40_000))
    ),
    # the Elasticsearch client's JSON encoder hits Python's recursion limit
    "artifact_data_depth_1010": lambda i: dumps(
        envelope("artifact", i, artifact_data(i, "k", data="DEEP"))
    ).replace(b'"DEEP"', _deep(1010)),
    # indexable, but no API answer could carry it (orjson's 254-level limit)
    "artifact_data_depth_300": lambda i: dumps(
        envelope("artifact", i, artifact_data(i, "k", data="DEEP"))
    ).replace(b'"DEEP"', _deep(300)),
}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("artifact_key_immense_term", "value_too_large"),
        ("artifact_data_depth_1010", "too_deep"),
        ("artifact_data_depth_300", "too_deep"),
    ],
)
async def test_permanent_write_failures_are_dead_lettered(
    poison_stack: Stack, name: str, reason: str
) -> None:
    """Data Elasticsearch (or the API) can never take is dead-lettered at parse time.

    Before the parse-time bounds, the immense key made the engine raise TransientError for
    that bulk item and retry the batch (and the valid events around it) without end; the
    deep `data` escaped the engine as a RecursionError.
    """
    stack = poison_stack
    run = uuid.uuid4().hex[:8]
    case = _artifact_case(name, reason, PERMANENT_WRITE_FAILURES[name])
    plan = build_plan([case], run, extras=False)
    retries = retries_total()
    await stack.publish(plan.records)
    ids = sorted(plan.artifact_keys)
    body = {"artifacts": {"id": {"any_": ids}}}
    assert await wait_until(stack.client, "/api/artifacts/count", body, len(ids), 45) == len(ids)
    dead = await stack.read_dlq(1, 30, settle=1.0)
    assert [dict(m.headers)["dlq.reason"].decode() for m in dead] == [reason]
    assert dead[0].value == case.value
    assert retries_total() == retries
    resp = await stack.client.post("/api/artifacts/filter", json={})
    assert resp.status_code == 200


async def test_unexpected_step_error_does_not_drop_the_batch(
    poison_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception the processor does not classify makes the batch be read again from the
    store's positions, never skipped: FastStream would otherwise log it and fetch on."""
    from indexer import runtime

    stack = poison_stack
    real_step = runtime.run_step
    failures = {"left": 2}

    def flaky_step(*args: Any, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("boom: an unclassified step failure")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(runtime, "run_step", flaky_step)
    plan = build_plan([], uuid.uuid4().hex[:8], extras=True)
    await stack.publish(plan.records)
    ids = sorted(plan.artifact_keys)
    body = {"artifacts": {"id": {"any_": ids}}}
    assert await wait_until(stack.client, "/api/artifacts/count", body, len(ids), 60) == len(ids)
    assert failures["left"] == 0


def test_a_parser_bug_dead_letters_the_record_not_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception other than PoisonEventError while parsing one record (a bug) poisons that
    record only (`parse_error`); before, it escaped the handler with the whole batch."""
    from indexer import step as step_module
    from indexer.local import LocalRecord
    from indexer.state import Tx
    from indexer.store import MemoryStore

    real = step_module.parse_record
    bad = _id()

    def buggy(entity: str, key: bytes | None, value: bytes | None) -> Any:
        if key == bad.encode():
            raise OverflowError("date value out of range")
        return real(entity, key, value)

    monkeypatch.setattr(step_module, "parse_record", buggy)
    good = _id()

    def rec(offset: int, key: str) -> LocalRecord:
        value = dumps(envelope("artifact", key, artifact_data(key, "k")))
        return LocalRecord("arts", 0, offset, key.encode(), value)

    topology = step_module.Topology({}, "arts", "members", 1, local_members=True)
    active = {("arts", 0): 1, ("members", 0): 1}
    out = step_module.run_step(
        Tx(MemoryStore()), topology, [rec(0, good), rec(1, bad), rec(2, good)], active
    )
    assert [w.doc_id for w in out.writes if w.kind == "artifact"] == [good]
    assert [(p.reason, p.record.offset) for p in out.poison] == [("parse_error", 1)]
    assert "OverflowError" in out.poison[0].detail

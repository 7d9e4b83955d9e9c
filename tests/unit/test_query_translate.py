"""Table-driven checks of the filter translation: filter JSON in, ES clauses out."""

from __future__ import annotations

from typing import Any

import pytest

from query.translate import epoch_us, translate_artifact_query, translate_collection_query
from services.errors import TranslationError
from services.prefect.filters import (
    ArtifactCollectionFilter,
    ArtifactFilter,
    DeploymentFilter,
    FlowFilter,
    FlowRunFilter,
    TaskRunFilter,
)

U1 = "00000000-0000-0000-0000-000000000001"
U2 = "00000000-0000-0000-0000-000000000002"
UP = "ABCDEF00-0000-0000-0000-0000000000AA"
UP_LOWER = UP.lower()
T0 = "2024-01-02T03:04:05.123456Z"
T0_US = 1704164645123456
LIVE = {"term": {"live": True}}
NONE: dict[str, Any] = {"match_none": {}}


def ex(field: str) -> dict[str, Any]:
    return {"exists": {"field": field}}


def missing(field: str) -> dict[str, Any]:
    return {"bool": {"must_not": [ex(field)]}}


def terms(field: str, *values: Any) -> dict[str, Any]:
    return {"terms": {field: list(values)}}


def term(field: str, value: Any) -> dict[str, Any]:
    return {"term": {field: value}}


def not_in(field: str, *values: Any) -> dict[str, Any]:
    return {"bool": {"filter": [ex(field)], "must_not": [terms(field, *values)]}}


def wc(field: str, value: str) -> dict[str, Any]:
    return {"wildcard": {field: {"value": value}}}


def rng(field: str, **bounds: int) -> dict[str, Any]:
    return {"range": {field: bounds}}


def anyof(*clauses: Any) -> dict[str, Any]:
    return {"bool": {"should": list(clauses), "minimum_should_match": 1}}


def allof(*clauses: Any) -> dict[str, Any]:
    return {"bool": {"filter": list(clauses)}}


def not_flag(field: str) -> dict[str, Any]:
    return {"bool": {"must_not": [term(field, True)]}}


def run(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    models: dict[str, Any] = {
        "artifacts": ArtifactFilter,
        "flow_runs": FlowRunFilter,
        "task_runs": TaskRunFilter,
        "flows": FlowFilter,
        "deployments": DeploymentFilter,
    }
    return translate_artifact_query(**{kind: models[kind].model_validate(payload)})


def expect(kind: str, clauses: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The full query for one filter: live + join requirements + ``clauses``.

    ``None`` means the whole predicate is FALSE.
    """
    if clauses is None:
        return {"bool": {"filter": [NONE]}}
    joins = {
        "artifacts": [],
        "flow_runs": [ex("fr.id")],
        "flows": [ex("fr.id"), ex("flow.id")],
        "deployments": [ex("fr.id"), ex("dep.id")],
        "task_runs": [ex("tr.id")],
    }[kind]
    return {"bool": {"filter": [LIVE, *joins, *clauses]}}


CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]] | None]] = [
    # ---- empty objects are TRUE (but still require the joined entity)
    ("artifacts", {}, []),
    ("flow_runs", {}, []),
    ("flows", {}, []),
    ("deployments", {}, []),
    ("task_runs", {}, []),
    ("flow_runs", {"operator": "or_"}, []),
    ("flow_runs", {"id": {}}, []),
    ("flow_runs", {"operator": "or_", "id": {}, "name": {"any_": ["x"]}}, []),
    # ---- artifact fields
    ("artifacts", {"id": {"any_": [U1, UP]}}, [terms("id", U1, UP_LOWER)]),
    ("artifacts", {"id": {"any_": []}}, None),
    ("artifacts", {"id": {"any_": [U1, U1]}}, [terms("id", U1)]),
    ("artifacts", {"key": {"any_": ["k1", "k2"]}}, [terms("key", "k1", "k2")]),
    ("artifacts", {"key": {"like_": "Ab_"}}, [wc("key_ci", "*ab?*")]),
    ("artifacts", {"key": {"like_": ""}}, []),
    ("artifacts", {"key": {"exists_": True}}, [ex("key")]),
    ("artifacts", {"key": {"exists_": False}}, [missing("key")]),
    (
        "artifacts",
        {"key": {"any_": ["k"], "like_": "k", "exists_": True}},
        [terms("key", "k"), wc("key_ci", "*k*"), ex("key")],
    ),
    ("artifacts", {"flow_run_id": {"any_": [U1]}}, [terms("flow_run_id", U1)]),
    ("artifacts", {"task_run_id": {"any_": [U2]}}, [terms("task_run_id", U2)]),
    ("artifacts", {"type": {"any_": ["table"]}}, [terms("type", "table")]),
    ("artifacts", {"type": {"not_any_": ["table"]}}, [not_in("type", "table")]),
    ("artifacts", {"type": {"not_any_": []}}, []),
    ("artifacts", {"type": {"any_": [], "not_any_": ["x"]}}, None),
    (
        "artifacts",
        {"operator": "or_", "type": {"any_": ["t"]}, "key": {"exists_": False}},
        [anyof(missing("key"), terms("type", "t"))],
    ),
    (
        "artifacts",
        {"operator": "or_", "id": {"any_": []}, "type": {"any_": ["t"]}},
        [terms("type", "t")],
    ),
    ("artifacts", {"operator": "or_", "id": {"any_": []}}, None),
    # ---- flow run fields
    ("flow_runs", {"id": {"any_": [U1]}}, [terms("fr.id", U1)]),
    ("flow_runs", {"id": {"not_any_": [U1]}}, [not_in("fr.id", U1)]),
    ("flow_runs", {"name": {"any_": ["n"]}}, [terms("fr.name", "n")]),
    ("flow_runs", {"name": {"like_": "N"}}, [wc("fr.name_ci", "*n*")]),
    ("flow_runs", {"tags": {"all_": ["a", "b"]}}, [term("fr.tags", "a"), term("fr.tags", "b")]),
    ("flow_runs", {"tags": {"all_": []}}, []),
    ("flow_runs", {"tags": {"any_": ["a", "b"]}}, [terms("fr.tags", "a", "b")]),
    ("flow_runs", {"tags": {"any_": []}}, None),
    ("flow_runs", {"tags": {"is_null_": True}}, [missing("fr.tags")]),
    ("flow_runs", {"tags": {"is_null_": False}}, [ex("fr.tags")]),
    (
        "flow_runs",
        {"tags": {"operator": "or_", "all_": ["a", "b"], "is_null_": True}},
        [anyof(allof(term("fr.tags", "a"), term("fr.tags", "b")), missing("fr.tags"))],
    ),
    ("flow_runs", {"deployment_id": {"any_": [U1]}}, [terms("fr.deployment_id", U1)]),
    ("flow_runs", {"deployment_id": {"is_null_": True}}, [missing("fr.deployment_id")]),
    (
        "flow_runs",
        {"deployment_id": {"operator": "or_", "any_": [U1], "is_null_": True}},
        [anyof(terms("fr.deployment_id", U1), missing("fr.deployment_id"))],
    ),
    ("flow_runs", {"work_queue_name": {"any_": ["q"]}}, [terms("fr.work_queue_name", "q")]),
    ("flow_runs", {"work_queue_name": {"is_null_": False}}, [ex("fr.work_queue_name")]),
    (
        "flow_runs",
        {"state": {"type": {"any_": ["COMPLETED", "FAILED"]}}},
        [terms("fr.state_type", "COMPLETED", "FAILED")],
    ),
    (
        "flow_runs",
        {"state": {"type": {"not_any_": ["COMPLETED"]}}},
        [not_in("fr.state_type", "COMPLETED")],
    ),
    ("flow_runs", {"state": {"name": {"any_": ["Late"]}}}, [terms("fr.state_name", "Late")]),
    ("flow_runs", {"state": {"name": {"not_any_": ["Late"]}}}, [not_in("fr.state_name", "Late")]),
    # an empty state sub-filter is dropped, so it cannot make an or_ TRUE
    (
        "flow_runs",
        {"state": {"operator": "or_", "type": {}, "name": {"any_": ["Late"]}}},
        [terms("fr.state_name", "Late")],
    ),
    (
        "flow_runs",
        {"state": {"operator": "or_", "type": {"any_": ["RUNNING"]}, "name": {"any_": ["x"]}}},
        [anyof(terms("fr.state_type", "RUNNING"), terms("fr.state_name", "x"))],
    ),
    ("flow_runs", {"state": {"operator": "or_", "type": {}, "name": {}}}, []),
    ("flow_runs", {"flow_version": {"any_": ["1.0"]}}, [terms("fr.flow_version", "1.0")]),
    ("flow_runs", {"start_time": {"before_": T0}}, [rng("fr.start_or_expected_us", lte=T0_US)]),
    ("flow_runs", {"start_time": {"after_": T0}}, [rng("fr.start_or_expected_us", gte=T0_US)]),
    ("flow_runs", {"start_time": {"is_null_": True}}, [missing("fr.start_time_us")]),
    ("flow_runs", {"start_time": {"is_null_": False}}, [ex("fr.start_time_us")]),
    ("flow_runs", {"end_time": {"before_": T0}}, [rng("fr.end_time_us", lte=T0_US)]),
    ("flow_runs", {"end_time": {"after_": T0}}, [rng("fr.end_time_us", gte=T0_US)]),
    ("flow_runs", {"end_time": {"is_null_": True}}, [missing("fr.end_time_us")]),
    (
        "flow_runs",
        {"expected_start_time": {"before_": T0, "after_": T0}},
        [
            rng("fr.expected_start_time_us", lte=T0_US),
            rng("fr.expected_start_time_us", gte=T0_US),
        ],
    ),
    (
        "flow_runs",
        {"next_scheduled_start_time": {"after_": T0}},
        [rng("fr.next_scheduled_start_time_us", gte=T0_US)],
    ),
    ("flow_runs", {"parent_flow_run_id": {"any_": [U1]}}, [terms("fr.parent_flow_run_id", U1)]),
    ("flow_runs", {"parent_flow_run_id": {"any_": []}}, None),
    ("flow_runs", {"parent_task_run_id": {"any_": [U2]}}, [terms("fr.parent_task_run_id", U2)]),
    (
        "flow_runs",
        {"parent_task_run_id": {"is_null_": True}},
        [missing("fr.parent_task_run_id")],
    ),
    ("flow_runs", {"idempotency_key": {"any_": ["i"]}}, [terms("fr.idempotency_key", "i")]),
    ("flow_runs", {"idempotency_key": {"not_any_": ["i"]}}, [not_in("fr.idempotency_key", "i")]),
    ("flow_runs", {"created_by": {"id_": [U1]}}, [terms("fr.created_by_id", U1)]),
    ("flow_runs", {"created_by": {"id_": []}}, None),
    (
        "flow_runs",
        {"created_by": {"type_": ["DEPLOYMENT"]}},
        [terms("fr.created_by_type", "DEPLOYMENT")],
    ),
    ("flow_runs", {"created_by": {"is_null_": True}}, [not_flag("fr.created_by_set")]),
    ("flow_runs", {"created_by": {"is_null_": False}}, [term("fr.created_by_set", True)]),
    (
        "flow_runs",
        {"created_by": {"operator": "or_", "type_": ["A"], "is_null_": True}},
        [anyof(terms("fr.created_by_type", "A"), not_flag("fr.created_by_set"))],
    ),
    (
        "flow_runs",
        {"operator": "or_", "name": {"like_": "x"}, "tags": {"any_": ["t"]}},
        [anyof(wc("fr.name_ci", "*x*"), terms("fr.tags", "t"))],
    ),
    # ---- task run fields
    ("task_runs", {"id": {"any_": [U1]}}, [terms("tr.id", U1)]),
    (
        "task_runs",
        {"name": {"any_": ["n"], "like_": "N%"}},
        [terms("tr.name", "n"), wc("tr.name_ci", "*n*")],
    ),
    ("task_runs", {"tags": {"all_": ["a"]}}, [term("tr.tags", "a")]),
    ("task_runs", {"tags": {"is_null_": True}}, [missing("tr.tags")]),
    ("task_runs", {"state": {"type": {"any_": ["PENDING"]}}}, [terms("tr.state_type", "PENDING")]),
    (
        "task_runs",
        {"state": {"name": {"any_": ["Retrying"]}}},
        [terms("tr.state_name", "Retrying")],
    ),
    (
        "task_runs",
        {"state": {"operator": "or_", "type": {}, "name": {"any_": ["R"]}}},
        [terms("tr.state_name", "R")],
    ),
    ("task_runs", {"start_time": {"before_": T0}}, [rng("tr.start_time_us", lte=T0_US)]),
    ("task_runs", {"start_time": {"is_null_": True}}, [missing("tr.start_time_us")]),
    ("task_runs", {"end_time": {"after_": T0}}, [rng("tr.end_time_us", gte=T0_US)]),
    ("task_runs", {"end_time": {"is_null_": False}}, [ex("tr.end_time_us")]),
    (
        "task_runs",
        {"expected_start_time": {"after_": T0}},
        [rng("tr.expected_start_time_us", gte=T0_US)],
    ),
    ("task_runs", {"subflow_runs": {"exists_": True}}, [term("tr.has_subflow_run", True)]),
    ("task_runs", {"subflow_runs": {"exists_": False}}, [not_flag("tr.has_subflow_run")]),
    ("task_runs", {"subflow_runs": {}}, []),
    # the is_null_ default False quirk
    ("task_runs", {"flow_run_id": {}}, [ex("tr.flow_run_id")]),
    ("task_runs", {"flow_run_id": {"is_null_": None}}, []),
    ("task_runs", {"flow_run_id": {"is_null_": True}}, [missing("tr.flow_run_id")]),
    ("task_runs", {"flow_run_id": {"is_null_": True, "any_": [U1]}}, [missing("tr.flow_run_id")]),
    ("task_runs", {"flow_run_id": {"any_": [U1]}}, [terms("tr.flow_run_id", U1)]),
    ("task_runs", {"flow_run_id": {"any_": [U1], "is_null_": None}}, [terms("tr.flow_run_id", U1)]),
    ("task_runs", {"flow_run_id": {"any_": []}}, None),
    # ---- flows
    ("flows", {"id": {"any_": [U1]}}, [terms("flow.id", U1)]),
    ("flows", {"id": {"not_any_": [U1]}}, [not_in("flow.id", U1)]),
    ("flows", {"deployment": {"is_null_": True}}, [not_flag("flow.has_deployment")]),
    ("flows", {"deployment": {"is_null_": False}}, [term("flow.has_deployment", True)]),
    ("flows", {"deployment": {}}, []),
    (
        "flows",
        {"name": {"any_": ["f"], "like_": "F"}},
        [terms("flow.name", "f"), wc("flow.name_ci", "*f*")],
    ),
    (
        "flows",
        {"tags": {"all_": ["a"], "is_null_": False}},
        [term("flow.tags", "a"), ex("flow.tags")],
    ),
    # ---- deployments
    ("deployments", {"id": {"any_": [U1]}}, [terms("dep.id", U1)]),
    ("deployments", {"id": {"not_any_": [U1]}}, [not_in("dep.id", U1)]),
    ("deployments", {"name": {"like_": "D"}}, [wc("dep.name_ci", "*d*")]),
    (
        "deployments",
        {"flow_or_deployment_name": {"like_": "X"}},
        [anyof(wc("dep.name_ci", "*x*"), wc("dep.flow_name_ci", "*x*"))],
    ),
    ("deployments", {"flow_or_deployment_name": {"like_": ""}}, []),
    ("deployments", {"paused": {"eq_": True}}, [term("dep.paused", True)]),
    ("deployments", {"paused": {"eq_": False}}, [term("dep.paused", False)]),
    ("deployments", {"tags": {"any_": ["a"]}}, [terms("dep.tags", "a")]),
    ("deployments", {"tags": {"is_null_": True}}, [missing("dep.tags")]),
    ("deployments", {"work_queue_name": {"any_": ["q"]}}, [terms("dep.work_queue_name", "q")]),
    ("deployments", {"concurrency_limit": {"ge_": 1, "le_": 3, "is_null_": True}}, []),
    # the ignored criteria adds nothing, not even a TRUE that would win an or_
    (
        "deployments",
        {"operator": "or_", "concurrency_limit": {"ge_": 1}, "paused": {"eq_": True}},
        [term("dep.paused", True)],
    ),
]


@pytest.mark.parametrize(("kind", "payload", "clauses"), CASES)
def test_translation(kind: str, payload: dict[str, Any], clauses: Any) -> None:
    assert run(kind, payload) == expect(kind, clauses)


def test_no_filters_is_only_live() -> None:
    assert translate_artifact_query() == {"bool": {"filter": [LIVE]}}
    assert translate_collection_query() == {"bool": {"filter": [LIVE]}}


def test_flow_side_filters_share_one_flow_run_requirement() -> None:
    query = translate_artifact_query(
        flow_runs=FlowRunFilter.model_validate({"name": {"any_": ["r"]}}),
        flows=FlowFilter.model_validate({"name": {"any_": ["f"]}}),
        deployments=DeploymentFilter.model_validate({"name": {"any_": ["d"]}}),
        task_runs=TaskRunFilter.model_validate({"name": {"any_": ["t"]}}),
    )
    assert query == {
        "bool": {
            "filter": [
                LIVE,
                ex("fr.id"),
                terms("fr.name", "r"),
                ex("flow.id"),
                terms("flow.name", "f"),
                ex("dep.id"),
                terms("dep.name", "d"),
                ex("tr.id"),
                terms("tr.name", "t"),
            ]
        }
    }


def test_or_at_top_of_flow_run_filter_stays_inside_the_join() -> None:
    query = translate_artifact_query(
        flow_runs=FlowRunFilter.model_validate(
            {"operator": "or_", "id": {"any_": [U1]}, "name": {"any_": ["n"]}}
        )
    )
    assert query == {
        "bool": {"filter": [LIVE, ex("fr.id"), anyof(terms("fr.id", U1), terms("fr.name", "n"))]}
    }


def test_collection_filter_uses_latest_id_and_has_no_live_flag() -> None:
    flt = ArtifactCollectionFilter.model_validate(
        {
            "latest_id": {"any_": [U1]},
            "key": {"like_": "K", "exists_": True},
            "flow_run_id": {"any_": [U2]},
            "task_run_id": {"any_": [U1]},
            "type": {"not_any_": ["x"]},
        }
    )
    assert translate_collection_query(flt) == {
        "bool": {
            "filter": [
                LIVE,
                terms("latest_id", U1),
                wc("key_ci", "*k*"),
                ex("key"),
                terms("flow_run_id", U2),
                terms("task_run_id", U1),
                not_in("type", "x"),
            ]
        }
    }
    assert translate_collection_query(flows=FlowFilter(), task_runs=TaskRunFilter()) == {
        "bool": {"filter": [LIVE, ex("fr.id"), ex("flow.id"), ex("tr.id")]}
    }


def test_false_collection_query() -> None:
    flt = ArtifactCollectionFilter.model_validate({"latest_id": {"any_": []}})
    assert translate_collection_query(flt) == {"bool": {"filter": [NONE]}}


def test_or_result_at_top_level_is_wrapped_in_bool() -> None:
    flt = ArtifactCollectionFilter.model_validate(
        {"operator": "or_", "key": {"any_": ["a"]}, "type": {"any_": ["b"]}}
    )
    assert translate_collection_query(flt) == {
        "bool": {"filter": [LIVE, anyof(terms("key", "a"), terms("type", "b"))]}
    }


def test_epoch_microseconds_are_exact() -> None:
    flt = FlowRunFilter.model_validate(
        {
            "end_time": {
                "before_": "2262-04-11T23:47:16.854775+00:00",
                "after_": "1969-12-31T23:59:59.999999Z",
            }
        }
    )
    assert run("flow_runs", flt.model_dump(mode="json")) == expect(
        "flow_runs",
        [rng("fr.end_time_us", lte=9223372036854775), rng("fr.end_time_us", gte=-1)],
    )


def test_offsets_and_naive_times() -> None:
    a = FlowRunFilter.model_validate({"end_time": {"before_": "2024-01-02T05:04:05.123456+02:00"}})
    b = FlowRunFilter.model_validate({"end_time": {"before_": "2024-01-02T03:04:05.123456"}})
    assert translate_artifact_query(flow_runs=a) == translate_artifact_query(flow_runs=b)
    assert translate_artifact_query(flow_runs=a) == expect(
        "flow_runs", [rng("fr.end_time_us", lte=T0_US)]
    )


def test_naive_datetime_bypassing_validation_is_rejected() -> None:
    from datetime import datetime

    with pytest.raises(TranslationError):
        epoch_us(datetime(2020, 1, 1))


def test_huge_terms_lists_are_split() -> None:
    from query import translate

    values = [f"k{i}" for i in range(translate.MAX_TERMS_PER_CLAUSE + 5)]
    query = run("artifacts", {"key": {"any_": values}})
    clause = query["bool"]["filter"][1]
    assert clause["bool"]["minimum_should_match"] == 1
    chunks = [c["terms"]["key"] for c in clause["bool"]["should"]]
    assert [len(c) for c in chunks] == [translate.MAX_TERMS_PER_CLAUSE, 5]

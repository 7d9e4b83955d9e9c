"""The filter, sort and request models accept and reject what Prefect 3.9.1 does."""

from __future__ import annotations

import inspect
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.prefect import filters as ours
from services.prefect.filters import (
    OPERATOR_CLASSES,
    ArtifactFilter,
    FilterModel,
    FlowRunFilter,
    Operator,
    OperatorFilterModel,
    StateType,
    TaskRunFilterFlowRunId,
)
from services.prefect.sorting import ArtifactCollectionSort, ArtifactSort

OUR_CLASSES = {
    name: cls
    for name, cls in vars(ours).items()
    if inspect.isclass(cls)
    and issubclass(cls, FilterModel)
    and cls.__module__ == ours.__name__
    and cls not in (FilterModel, OperatorFilterModel)
}


def test_operator_only_where_prefect_has_it() -> None:
    with_operator = {name for name, cls in OUR_CLASSES.items() if "operator" in cls.model_fields}
    assert with_operator == {cls.__name__ for cls in OPERATOR_CLASSES}
    for cls in OPERATOR_CLASSES:
        assert cls().operator is Operator.and_


def test_unknown_keys_are_rejected_at_every_level() -> None:
    for cls in OUR_CLASSES.values():
        with pytest.raises(ValidationError):
            cls.model_validate({"no_such_field": 1})
    with pytest.raises(ValidationError):
        FlowRunFilter.model_validate({"state": {"type": {"any_": ["RUNNING"], "x": 1}}})


def test_task_run_flow_run_id_defaults_to_not_null() -> None:
    assert TaskRunFilterFlowRunId().is_null_ is False
    assert TaskRunFilterFlowRunId.model_validate({"is_null_": None}).is_null_ is None


def test_state_type_values() -> None:
    assert [s.value for s in StateType] == [
        "SCHEDULED",
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "CRASHED",
        "PAUSED",
        "CANCELLING",
    ]
    with pytest.raises(ValidationError):
        FlowRunFilter.model_validate({"state": {"type": {"any_": ["completed"]}}})


def test_sort_values() -> None:
    expected = ["CREATED_DESC", "UPDATED_DESC", "ID_DESC", "KEY_DESC", "KEY_ASC"]
    assert [s.value for s in ArtifactSort] == expected
    assert [s.value for s in ArtifactCollectionSort] == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (
            "2024-01-02T05:04:05+02:00",
            datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_datetimes(raw: Any, expected: datetime) -> None:
    value = FlowRunFilter.model_validate({"end_time": {"before_": raw}}).end_time
    assert value is not None and value.before_ is not None
    assert value.before_ == expected
    assert value.before_.tzinfo is not None


def test_uuids_are_parsed_and_rejected() -> None:
    flt = ArtifactFilter.model_validate({"id": {"any_": ["ABCDEF00-0000-0000-0000-0000000000AA"]}})
    assert flt.id is not None and flt.id.any_ is not None
    assert str(flt.id.any_[0]) == "abcdef00-0000-0000-0000-0000000000aa"
    with pytest.raises(ValidationError):
        ArtifactFilter.model_validate({"id": {"any_": ["nope"]}})


def test_operator_values() -> None:
    with pytest.raises(ValidationError):
        ArtifactFilter.model_validate({"operator": "or"})
    assert ArtifactFilter.model_validate({"operator": "or_"}).operator is Operator.or_


# ------------------------------------------------- parity with Prefect itself


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for arg in typing.get_args(annotation):
        found.extend(_model_types(arg))
    if isinstance(annotation, types.UnionType):
        for arg in annotation.__args__:
            found.extend(_model_types(arg))
    return found


def _reachable(roots: list[type[BaseModel]]) -> dict[str, type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {}
    stack = list(roots)
    while stack:
        cls = stack.pop()
        if cls.__name__ in seen:
            continue
        seen[cls.__name__] = cls
        for field in cls.model_fields.values():
            stack.extend(_model_types(field.annotation))
    return seen


def test_same_classes_fields_and_defaults_as_prefect() -> None:
    pf = pytest.importorskip("prefect.server.schemas.filters")
    roots = [
        pf.ArtifactFilter,
        pf.ArtifactCollectionFilter,
        pf.FlowRunFilter,
        pf.TaskRunFilter,
        pf.FlowFilter,
        pf.DeploymentFilter,
    ]
    theirs = _reachable(roots)
    assert set(theirs) == set(OUR_CLASSES)
    for name, their_cls in theirs.items():
        our_cls = OUR_CLASSES[name]
        assert set(our_cls.model_fields) == set(their_cls.model_fields), name
        assert their_cls.model_config.get("extra") == "forbid"
        for field, info in their_cls.model_fields.items():
            our_default = our_cls.model_fields[field].default
            their_default = info.default
            if isinstance(their_default, pf.Operator):
                their_default = their_default.value
            assert our_default == their_default, (name, field)


SAMPLES: list[dict[str, Any]] = [
    {},
    {"operator": "or_"},
    {"operator": "xor"},
    {"id": {"any_": ["00000000-0000-0000-0000-000000000001"]}},
    {"id": {"any_": ["bad"]}},
    {"id": {"any_": "00000000-0000-0000-0000-000000000001"}},
    {"key": {"like_": 5}},
    {"key": {"like_": "x", "exists_": "yes"}},
    {"key": {"exists_": "true"}},
    {"type": {"not_any_": [1]}},
    {"flow_run_id": None},
    {"task_run_id": {"any_": None}},
    {"latest_id": {"any_": []}},
]

FLOW_RUN_SAMPLES: list[dict[str, Any]] = [
    {"start_time": {"before_": "2024-01-01"}},
    {"start_time": {"before_": "yesterday"}},
    {"start_time": {"before_": 1700000000}},
    {"start_time": {"before_": "2024-01-01T00:00:00.1234567Z"}},
    {"state": {"type": {"any_": ["COMPLETED"]}, "name": {"not_any_": ["x"]}}},
    {"state": {"type": {"any_": ["Completed"]}}},
    {"state": {"operator": "or_", "type": None}},
    {"created_by": {"id_": ["00000000-0000-0000-0000-000000000001"], "type_": ["X"]}},
    {"parent_flow_run_id": {"operator": "or_", "any_": []}},
    {"tags": {"all_": ["a"], "any_": ["b"], "is_null_": 0}},
    {"tags": {"all_": "a"}},
]


def _accepts(cls: type[BaseModel], payload: dict[str, Any]) -> bool:
    try:
        cls.model_validate(payload)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("payload", SAMPLES)
@pytest.mark.parametrize("name", ["ArtifactFilter", "ArtifactCollectionFilter"])
def test_same_acceptance_as_prefect_artifact_filters(name: str, payload: dict[str, Any]) -> None:
    pf = pytest.importorskip("prefect.server.schemas.filters")
    assert _accepts(OUR_CLASSES[name], payload) == _accepts(getattr(pf, name), payload)


@pytest.mark.parametrize("payload", FLOW_RUN_SAMPLES)
def test_same_acceptance_as_prefect_flow_run_filter(payload: dict[str, Any]) -> None:
    pf = pytest.importorskip("prefect.server.schemas.filters")
    assert _accepts(FlowRunFilter, payload) == _accepts(pf.FlowRunFilter, payload)
    if _accepts(FlowRunFilter, payload) and "start_time" in payload:
        ours_value = FlowRunFilter.model_validate(payload).start_time
        theirs_value = pf.FlowRunFilter.model_validate(payload).start_time
        assert ours_value is not None and ours_value.before_ == theirs_value.before_

"""Request-side mirrors of the Prefect 3.9.1 filter objects the artifact endpoints accept.

The query service must accept exactly the JSON that a Prefect server accepts on
``/api/artifacts/filter``, ``/count``, ``/latest/filter`` and ``/latest/count``,
and reject exactly what it rejects. These models therefore reproduce Prefect's
field names, types, defaults and ``operator`` placement one to one; they carry no
behaviour. What each field *means* is implemented once, in ``query.translate``.

Conventions kept from Prefect:

* every filter object forbids unknown keys (``extra="forbid"``);
* every field is optional and defaults to ``None`` (absent), except
  ``TaskRunFilterFlowRunId.is_null_`` whose default is ``False``;
* ``operator`` (``and_`` / ``or_``, default ``and_``) exists only on the classes
  listed in ``OPERATOR_CLASSES``;
* timestamps accept anything pydantic's ``datetime`` accepts, then anything
  ``pendulum.parse(strict=True)`` accepts, and a value without a UTC offset is
  read as UTC (what Prefect's pendulum-backed ``DateTime`` type does, errors
  included).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import pendulum
from pydantic import BaseModel, ConfigDict, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError


class Operator(StrEnum):
    """How the criteria of one filter object are combined."""

    and_ = "and_"
    or_ = "or_"


class StateType(StrEnum):
    """The run state types Prefect knows; filters compare them by value."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"


def _assume_utc(value: datetime) -> datetime:
    """Attach UTC to a naive timestamp; leave an aware one untouched."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        return value.replace(tzinfo=UTC)
    return value


def _plain(value: datetime) -> datetime:
    """A stdlib ``datetime`` with a fixed offset (pendulum returns a subclass)."""
    offset = value.utcoffset() or timedelta(0)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=timezone(offset),
    )


def _prefect_datetime(value: Any, handler: ValidatorFunctionWrapHandler) -> datetime:
    """Accept what Prefect's pendulum-backed ``DateTime`` accepts, with its errors.

    pydantic's own ``datetime`` parsing is tried first; when it fails, the value
    goes to ``pendulum.parse(..., strict=True)``, which also knows ISO 8601 week
    and ordinal dates, basic formats and bare times. A ``ValueError`` from the
    parser is reported as is (``Unable to parse string [...]``), any other failure
    (a non-string such as an out-of-range number) as ``value is not a valid
    datetime``, and a parse that yields no date-time (a duration) names its type.
    """
    if isinstance(value, datetime):
        return _assume_utc(value)
    try:
        return _assume_utc(handler(value))
    except ValueError:
        try:
            parsed = pendulum.parse(value, strict=True)
        except ValueError:
            raise
        except Exception as exc:
            raise PydanticCustomError("value_error", "value is not a valid datetime") from exc
        if isinstance(parsed, datetime):
            return _assume_utc(_plain(parsed))
        raise ValueError(f"value is not a valid datetime it is a {type(parsed)}") from None


UtcDateTime = Annotated[datetime, WrapValidator(_prefect_datetime)]
"""A timezone-aware timestamp; naive input is taken to be UTC."""


class FilterModel(BaseModel):
    """Base of every filter object: unknown keys are an error, as in Prefect."""

    model_config = ConfigDict(extra="forbid")


class OperatorFilterModel(FilterModel):
    """Base of the filter objects whose criteria the caller may OR together."""

    operator: Operator = Operator.and_


# --------------------------------------------------------------------- flows


class FlowFilterId(FilterModel):
    """Criteria on the flow's id."""

    any_: list[UUID] | None = None
    not_any_: list[UUID] | None = None


class FlowFilterDeployment(OperatorFilterModel):
    """Whether some deployment points at the flow."""

    is_null_: bool | None = None


class FlowFilterName(FilterModel):
    """Criteria on the flow's name (exact set or case-insensitive contains)."""

    any_: list[str] | None = None
    like_: str | None = None


class FlowFilterTags(OperatorFilterModel):
    """Criteria on the flow's tags."""

    all_: list[str] | None = None
    is_null_: bool | None = None


class FlowFilter(OperatorFilterModel):
    """Criteria on the flow of the artifact's flow run."""

    id: FlowFilterId | None = None
    deployment: FlowFilterDeployment | None = None
    name: FlowFilterName | None = None
    tags: FlowFilterTags | None = None


# ----------------------------------------------------------------- flow runs


class FlowRunFilterId(FilterModel):
    """Criteria on the flow run's id."""

    any_: list[UUID] | None = None
    not_any_: list[UUID] | None = None


class FlowRunFilterName(FilterModel):
    """Criteria on the flow run's name."""

    any_: list[str] | None = None
    like_: str | None = None


class FlowRunFilterTags(OperatorFilterModel):
    """Criteria on the flow run's tags."""

    all_: list[str] | None = None
    any_: list[str] | None = None
    is_null_: bool | None = None


class FlowRunFilterDeploymentId(OperatorFilterModel):
    """Criteria on the flow run's deployment id."""

    any_: list[UUID] | None = None
    is_null_: bool | None = None


class FlowRunFilterWorkQueueName(OperatorFilterModel):
    """Criteria on the flow run's work queue name."""

    any_: list[str] | None = None
    is_null_: bool | None = None


class FlowRunFilterStateType(FilterModel):
    """Criteria on the flow run's state type."""

    any_: list[StateType] | None = None
    not_any_: list[StateType] | None = None


class FlowRunFilterStateName(FilterModel):
    """Criteria on the flow run's state name."""

    any_: list[str] | None = None
    not_any_: list[str] | None = None


class FlowRunFilterState(OperatorFilterModel):
    """Criteria on the flow run's state (type and name)."""

    type: FlowRunFilterStateType | None = None
    name: FlowRunFilterStateName | None = None


class FlowRunFilterFlowVersion(FilterModel):
    """Criteria on the flow run's flow version."""

    any_: list[str] | None = None


class FlowRunFilterStartTime(FilterModel):
    """Criteria on the flow run's start time (bounds use start, else expected start)."""

    before_: UtcDateTime | None = None
    after_: UtcDateTime | None = None
    is_null_: bool | None = None


class FlowRunFilterEndTime(FilterModel):
    """Criteria on the flow run's end time."""

    before_: UtcDateTime | None = None
    after_: UtcDateTime | None = None
    is_null_: bool | None = None


class FlowRunFilterExpectedStartTime(FilterModel):
    """Criteria on the flow run's expected start time."""

    before_: UtcDateTime | None = None
    after_: UtcDateTime | None = None


class FlowRunFilterNextScheduledStartTime(FilterModel):
    """Criteria on the flow run's next scheduled start time."""

    before_: UtcDateTime | None = None
    after_: UtcDateTime | None = None


class FlowRunFilterParentFlowRunId(OperatorFilterModel):
    """Select subflow runs by the flow run that owns their parent task run."""

    any_: list[UUID] | None = None


class FlowRunFilterParentTaskRunId(OperatorFilterModel):
    """Criteria on the flow run's parent task run id."""

    any_: list[UUID] | None = None
    is_null_: bool | None = None


class FlowRunFilterIdempotencyKey(FilterModel):
    """Criteria on the flow run's idempotency key."""

    any_: list[str] | None = None
    not_any_: list[str] | None = None


class FlowRunFilterCreatedBy(OperatorFilterModel):
    """Criteria on who created the flow run (id, type, or whether it is recorded)."""

    id_: list[UUID] | None = None
    type_: list[str] | None = None
    is_null_: bool | None = None


class FlowRunFilter(OperatorFilterModel):
    """Criteria on the artifact's flow run."""

    id: FlowRunFilterId | None = None
    name: FlowRunFilterName | None = None
    tags: FlowRunFilterTags | None = None
    deployment_id: FlowRunFilterDeploymentId | None = None
    work_queue_name: FlowRunFilterWorkQueueName | None = None
    state: FlowRunFilterState | None = None
    flow_version: FlowRunFilterFlowVersion | None = None
    start_time: FlowRunFilterStartTime | None = None
    end_time: FlowRunFilterEndTime | None = None
    expected_start_time: FlowRunFilterExpectedStartTime | None = None
    next_scheduled_start_time: FlowRunFilterNextScheduledStartTime | None = None
    parent_flow_run_id: FlowRunFilterParentFlowRunId | None = None
    parent_task_run_id: FlowRunFilterParentTaskRunId | None = None
    idempotency_key: FlowRunFilterIdempotencyKey | None = None
    created_by: FlowRunFilterCreatedBy | None = None


# ----------------------------------------------------------------- task runs


class TaskRunFilterFlowRunId(OperatorFilterModel):
    """Criteria on the task run's flow run id.

    Unlike every other ``is_null_``, this one defaults to ``False``: an empty
    object therefore asks for task runs that *have* a flow run.
    """

    any_: list[UUID] | None = None
    is_null_: bool | None = False


class TaskRunFilterId(FilterModel):
    """Criteria on the task run's id."""

    any_: list[UUID] | None = None


class TaskRunFilterName(FilterModel):
    """Criteria on the task run's name."""

    any_: list[str] | None = None
    like_: str | None = None


class TaskRunFilterTags(OperatorFilterModel):
    """Criteria on the task run's tags."""

    all_: list[str] | None = None
    is_null_: bool | None = None


class TaskRunFilterStateType(FilterModel):
    """Criteria on the task run's state type."""

    any_: list[StateType] | None = None


class TaskRunFilterStateName(FilterModel):
    """Criteria on the task run's state name."""

    any_: list[str] | None = None


class TaskRunFilterState(OperatorFilterModel):
    """Criteria on the task run's state (type and name)."""

    type: TaskRunFilterStateType | None = None
    name: TaskRunFilterStateName | None = None


class TaskRunFilterSubFlowRuns(FilterModel):
    """Whether some flow run is a subflow run of the task run."""

    exists_: bool | None = None


class TaskRunFilterStartTime(FilterModel):
    """Criteria on the task run's start time."""

    before_: UtcDateTime | None = None
    after_: UtcDateTime | None = None
    is_null_: bool | None = None


class TaskRunFilterEndTime(FilterModel):
    """Criteria on the task run's end time."""

    before_: UtcDateTime | None = None
    after_: UtcDateTime | None = None
    is_null_: bool | None = None


class TaskRunFilterExpectedStartTime(FilterModel):
    """Criteria on the task run's expected start time."""

    before_: UtcDateTime | None = None
    after_: UtcDateTime | None = None


class TaskRunFilter(OperatorFilterModel):
    """Criteria on the artifact's task run."""

    id: TaskRunFilterId | None = None
    name: TaskRunFilterName | None = None
    tags: TaskRunFilterTags | None = None
    state: TaskRunFilterState | None = None
    start_time: TaskRunFilterStartTime | None = None
    end_time: TaskRunFilterEndTime | None = None
    expected_start_time: TaskRunFilterExpectedStartTime | None = None
    subflow_runs: TaskRunFilterSubFlowRuns | None = None
    flow_run_id: TaskRunFilterFlowRunId | None = None


# --------------------------------------------------------------- deployments


class DeploymentFilterId(FilterModel):
    """Criteria on the deployment's id."""

    any_: list[UUID] | None = None
    not_any_: list[UUID] | None = None


class DeploymentFilterName(FilterModel):
    """Criteria on the deployment's name."""

    any_: list[str] | None = None
    like_: str | None = None


class DeploymentOrFlowNameFilter(FilterModel):
    """Case-insensitive contains on the deployment's name or its own flow's name."""

    like_: str | None = None


class DeploymentFilterPaused(FilterModel):
    """Whether the deployment is paused."""

    eq_: bool | None = None


class DeploymentFilterWorkQueueName(FilterModel):
    """Criteria on the deployment's work queue name."""

    any_: list[str] | None = None


class DeploymentFilterConcurrencyLimit(FilterModel):
    """Retired criteria: accepted for compatibility, never applied (as in Prefect)."""

    ge_: int | None = None
    le_: int | None = None
    is_null_: bool | None = None


class DeploymentFilterTags(OperatorFilterModel):
    """Criteria on the deployment's tags."""

    all_: list[str] | None = None
    any_: list[str] | None = None
    is_null_: bool | None = None


class DeploymentFilter(OperatorFilterModel):
    """Criteria on the deployment of the artifact's flow run."""

    id: DeploymentFilterId | None = None
    name: DeploymentFilterName | None = None
    flow_or_deployment_name: DeploymentOrFlowNameFilter | None = None
    paused: DeploymentFilterPaused | None = None
    tags: DeploymentFilterTags | None = None
    work_queue_name: DeploymentFilterWorkQueueName | None = None
    concurrency_limit: DeploymentFilterConcurrencyLimit | None = None


# ----------------------------------------------------------------- artifacts


class ArtifactFilterId(FilterModel):
    """Criteria on the artifact's id."""

    any_: list[UUID] | None = None


class ArtifactFilterKey(FilterModel):
    """Criteria on the artifact's key (set, pattern with ``%``/``_``, presence)."""

    any_: list[str] | None = None
    like_: str | None = None
    exists_: bool | None = None


class ArtifactFilterFlowRunId(FilterModel):
    """Criteria on the artifact's flow run id."""

    any_: list[UUID] | None = None


class ArtifactFilterTaskRunId(FilterModel):
    """Criteria on the artifact's task run id."""

    any_: list[UUID] | None = None


class ArtifactFilterType(FilterModel):
    """Criteria on the artifact's type."""

    any_: list[str] | None = None
    not_any_: list[str] | None = None


class ArtifactFilter(OperatorFilterModel):
    """Criteria on the artifact's own fields."""

    id: ArtifactFilterId | None = None
    key: ArtifactFilterKey | None = None
    flow_run_id: ArtifactFilterFlowRunId | None = None
    task_run_id: ArtifactFilterTaskRunId | None = None
    type: ArtifactFilterType | None = None


class ArtifactCollectionFilterLatestId(FilterModel):
    """Criteria on the id of the collection's latest artifact."""

    any_: list[UUID] | None = None


class ArtifactCollectionFilterKey(FilterModel):
    """Criteria on the collection's key."""

    any_: list[str] | None = None
    like_: str | None = None
    exists_: bool | None = None


class ArtifactCollectionFilterFlowRunId(FilterModel):
    """Criteria on the latest artifact's flow run id."""

    any_: list[UUID] | None = None


class ArtifactCollectionFilterTaskRunId(FilterModel):
    """Criteria on the latest artifact's task run id."""

    any_: list[UUID] | None = None


class ArtifactCollectionFilterType(FilterModel):
    """Criteria on the latest artifact's type."""

    any_: list[str] | None = None
    not_any_: list[str] | None = None


class ArtifactCollectionFilter(OperatorFilterModel):
    """Criteria on an artifact collection's own fields."""

    latest_id: ArtifactCollectionFilterLatestId | None = None
    key: ArtifactCollectionFilterKey | None = None
    flow_run_id: ArtifactCollectionFilterFlowRunId | None = None
    task_run_id: ArtifactCollectionFilterTaskRunId | None = None
    type: ArtifactCollectionFilterType | None = None


OPERATOR_CLASSES: tuple[type[OperatorFilterModel], ...] = (
    FlowFilterDeployment,
    FlowFilterTags,
    FlowFilter,
    FlowRunFilterTags,
    FlowRunFilterDeploymentId,
    FlowRunFilterWorkQueueName,
    FlowRunFilterState,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterParentTaskRunId,
    FlowRunFilterCreatedBy,
    FlowRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterTags,
    TaskRunFilterState,
    TaskRunFilter,
    DeploymentFilterTags,
    DeploymentFilter,
    ArtifactFilter,
    ArtifactCollectionFilter,
)
"""The filter classes that carry ``operator``, in the same places as Prefect."""

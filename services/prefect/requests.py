"""Bodies of the four artifact endpoints, validated the way Prefect's FastAPI app does.

Prefect declares each body key as a separate FastAPI ``Body`` parameter, which
gives these rules, mirrored here:

* unknown *top-level* keys are ignored, while unknown keys *inside* a filter
  object are rejected (the filter models forbid extras);
* a key sent as JSON ``null`` behaves as if it were absent (FastAPI substitutes
  the parameter's default);
* ``offset`` defaults to 0 and must be >= 0; ``sort`` defaults to ``ID_DESC``;
* ``limit`` defaults to the server's configured default limit, and must lie in
  ``0 .. default limit``. Prefect checks it in a dependency that runs before the
  rest of the body is validated, so an out-of-range limit is reported on its own
  (``InvalidLimitError``); a limit that is not an integer is reported together
  with the other field errors. ``parse_read_request`` reproduces that order.

The default limit is a parameter (validation context key ``default_limit``), not a
constant: deployments configure it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from services.prefect.filters import (
    ArtifactCollectionFilter,
    ArtifactFilter,
    DeploymentFilter,
    FlowFilter,
    FlowRunFilter,
    TaskRunFilter,
)
from services.prefect.sorting import ArtifactCollectionSort, ArtifactSort

DEFAULT_LIMIT = 200
"""Prefect's out-of-the-box ``PREFECT_SERVER_API_DEFAULT_LIMIT``."""

CONTEXT_DEFAULT_LIMIT = "default_limit"
"""Validation-context key carrying the configured default (and maximum) limit."""

_INT = TypeAdapter(int)


class InvalidLimitError(ValueError):
    """``limit`` is an integer outside ``0 .. default limit``.

    ``detail`` is the sentence Prefect puts in its 422 response body.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def check_limit(limit: int | None, default_limit: int) -> int:
    """The effective limit: the default when absent, else the value if in range."""
    if limit is None:
        return default_limit
    if limit < 0:
        raise InvalidLimitError("Invalid limit: must be greater than or equal to 0.")
    if limit > default_limit:
        raise InvalidLimitError(f"Invalid limit: must be less than or equal to {default_limit}.")
    return limit


def _context_limit(info: ValidationInfo) -> int:
    context = info.context
    if isinstance(context, Mapping):
        value = context.get(CONTEXT_DEFAULT_LIMIT, DEFAULT_LIMIT)
        if isinstance(value, int):
            return value
    return DEFAULT_LIMIT


class _Body(BaseModel):
    """Common behaviour: extra top-level keys ignored, ``null`` means absent."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data


class ArtifactCountRequest(_Body):
    """Body of ``POST /api/artifacts/count``."""

    artifacts: ArtifactFilter | None = None
    flow_runs: FlowRunFilter | None = None
    task_runs: TaskRunFilter | None = None
    flows: FlowFilter | None = None
    deployments: DeploymentFilter | None = None


class ArtifactCollectionCountRequest(_Body):
    """Body of ``POST /api/artifacts/latest/count``."""

    artifacts: ArtifactCollectionFilter | None = None
    flow_runs: FlowRunFilter | None = None
    task_runs: TaskRunFilter | None = None
    flows: FlowFilter | None = None
    deployments: DeploymentFilter | None = None


class _Window(_Body):
    """``offset`` and ``limit`` rules of the list endpoints (fields declared below).

    The subclasses declare their fields in the order Prefect's endpoint reports
    their errors: ``limit`` (a dependency, solved first), ``sort``, ``offset``,
    then the filters.
    """

    @model_validator(mode="before")
    @classmethod
    def _default_limit(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping) and data.get("limit") is None:
            return {**data, "limit": _context_limit(info)}
        return data

    @field_validator("limit", check_fields=False)
    @classmethod
    def _limit_in_range(cls, value: int, info: ValidationInfo) -> int:
        return check_limit(value, _context_limit(info))


class ArtifactReadRequest(_Window):
    """Body of ``POST /api/artifacts/filter``."""

    limit: int = DEFAULT_LIMIT
    sort: ArtifactSort = ArtifactSort.ID_DESC
    offset: int = Field(default=0, ge=0)
    artifacts: ArtifactFilter | None = None
    flow_runs: FlowRunFilter | None = None
    task_runs: TaskRunFilter | None = None
    flows: FlowFilter | None = None
    deployments: DeploymentFilter | None = None


class ArtifactCollectionReadRequest(_Window):
    """Body of ``POST /api/artifacts/latest/filter``."""

    limit: int = DEFAULT_LIMIT
    sort: ArtifactCollectionSort = ArtifactCollectionSort.ID_DESC
    offset: int = Field(default=0, ge=0)
    artifacts: ArtifactCollectionFilter | None = None
    flow_runs: FlowRunFilter | None = None
    task_runs: TaskRunFilter | None = None
    flows: FlowFilter | None = None
    deployments: DeploymentFilter | None = None


ReadRequestT = TypeVar("ReadRequestT", ArtifactReadRequest, ArtifactCollectionReadRequest)
CountRequestT = TypeVar("CountRequestT", ArtifactCountRequest, ArtifactCollectionCountRequest)


def _every_field_missing(model: type[BaseModel]) -> ValidationError:
    """FastAPI's answer to a JSON body that is not an object: each field is missing."""
    return ValidationError.from_exception_data(
        model.__name__,
        [InitErrorDetails(type="missing", loc=(name,), input=None) for name in model.model_fields],
    )


def parse_read_request(
    model: type[ReadRequestT], body: object, *, default_limit: int = DEFAULT_LIMIT
) -> ReadRequestT:
    """Validate a list-endpoint body (already decoded from JSON) like Prefect.

    Raises ``InvalidLimitError`` first when ``limit`` is an integer out of range
    (before anything else is looked at), else pydantic's ``ValidationError``
    listing every invalid field in Prefect's order. A missing body (``None``)
    means all defaults; a body that is not an object reports every field missing.
    Nested filters are validated the way FastAPI validates body parameters
    (``from_attributes``), which decides the error type of a non-object filter.
    """
    data = {} if body is None else body
    if not isinstance(data, Mapping):
        raise _every_field_missing(model)
    raw = data.get("limit")
    if raw is not None:
        try:
            value = _INT.validate_python(raw)
        except ValidationError:
            pass  # reported with the other field errors below
        else:
            check_limit(value, default_limit)
    return model.model_validate(
        data, context={CONTEXT_DEFAULT_LIMIT: default_limit}, from_attributes=True
    )


def parse_count_request(model: type[CountRequestT], body: object) -> CountRequestT:
    """Validate a count-endpoint body (already decoded from JSON) like Prefect."""
    data = {} if body is None else body
    if not isinstance(data, Mapping):
        raise _every_field_missing(model)
    return model.model_validate(data, from_attributes=True)

"""Translate Prefect artifact filters into one Elasticsearch ``bool`` query.

Prefect evaluates its filters in SQL, with three-valued logic: a row is returned
only when the whole predicate is TRUE, and a comparison with NULL is never TRUE.
The denormalized documents (``docs/document-model.md``) represent a NULL as an
absent field, so every clause built here matches exactly the documents for which
Prefect's predicate is TRUE. Because no Prefect filter negates a composite
predicate, "the set of TRUE rows" composes by intersection (``and_``) and union
(``or_``), and each leaf only has to be exact on its own:

* ``IN (...)``: ``terms`` (an absent field never matches); ``IN ()`` is FALSE.
* ``NOT IN (...)``: ``exists`` and not ``terms``; an empty ``not_any_`` is skipped
  by Prefect.
* ``all_`` on tags: one ``term`` per tag; skipped by Prefect when empty.
* ``like_``: see ``query.like``; skipped when the value is empty.
* timestamps: inclusive ranges on integer microseconds since the epoch.

A filter object whose criteria list is empty is TRUE whatever its operator;
otherwise ``and_`` intersects and ``or_`` unites the criteria. The EXISTS
sub-queries Prefect uses to reach the flow run, flow, deployment and task run
become ``exists`` requirements on the embedded ``fr``/``flow``/``dep``/``tr``
objects. Everything here is pure: dicts in, dicts out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from query.like import parse_like_pattern, tokens_literal, tokens_to_wildcard
from services.errors import TranslationError
from services.prefect.filters import (
    ArtifactCollectionFilter,
    ArtifactFilter,
    DeploymentFilter,
    FlowFilter,
    FlowRunFilter,
    FlowRunFilterState,
    Operator,
    OperatorFilterModel,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
)
from services.trigrams import MAX_CHARS, MIN_CHARS, trigram_tokens

Query = dict[str, Any]
"""An Elasticsearch query clause, as the JSON-ready dict the client sends."""

MATCH_ALL: Query = {"match_all": {}}
MATCH_NONE: Query = {"match_none": {}}
MAX_TERMS_PER_CLAUSE = 65_536
"""Elasticsearch's default ``index.max_terms_count``; longer lists are split."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


# ------------------------------------------------------------ clause helpers


def _is_true(clause: Query) -> bool:
    return clause == MATCH_ALL


def _is_false(clause: Query) -> bool:
    return clause == MATCH_NONE


def all_of(clauses: Iterable[Query]) -> Query:
    """Conjunction; TRUE parts are dropped and any FALSE part makes it FALSE."""
    kept: list[Query] = []
    for clause in clauses:
        if _is_false(clause):
            return MATCH_NONE
        if _is_true(clause):
            continue
        inner = clause.get("bool")
        if isinstance(inner, dict) and set(inner) == {"filter"}:
            kept.extend(inner["filter"])  # a nested conjunction is spliced in
        else:
            kept.append(clause)
    if not kept:
        return MATCH_ALL
    if len(kept) == 1:
        return kept[0]
    return {"bool": {"filter": kept}}


def any_of(clauses: Iterable[Query]) -> Query:
    """Disjunction of a non-empty list; FALSE parts are dropped, a TRUE part wins."""
    kept: list[Query] = []
    for clause in clauses:
        if _is_true(clause):
            return MATCH_ALL
        if not _is_false(clause):
            kept.append(clause)
    if not kept:
        return MATCH_NONE
    if len(kept) == 1:
        return kept[0]
    return {"bool": {"should": kept, "minimum_should_match": 1}}


def combine(operator: Operator, criteria: Sequence[Query]) -> Query:
    """Combine a filter object's criteria the way Prefect does.

    No criteria means TRUE, whatever the operator (Prefect returns ``TRUE`` before
    looking at the operator).
    """
    if not criteria:
        return MATCH_ALL
    if operator is Operator.or_:
        return any_of(criteria)
    return all_of(criteria)


def _operator_of(model: BaseModel) -> Operator:
    if isinstance(model, OperatorFilterModel):
        return model.operator
    return Operator.and_


def exists(field: str) -> Query:
    """The field holds a non-NULL value (SQL ``IS NOT NULL``)."""
    return {"exists": {"field": field}}


def missing(field: str) -> Query:
    """The field is NULL (SQL ``IS NULL``)."""
    return {"bool": {"must_not": [exists(field)]}}


def term(field: str, value: str | bool) -> Query:
    """Exact equality with one value."""
    return {"term": {field: value}}


def _render(value: str | UUID) -> str:
    # ``str`` gives the canonical lowercase form of a UUID and the value of a
    # ``StrEnum`` member such as ``StateType.COMPLETED``.
    return str(value)


def _unique(values: Iterable[str | UUID]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(_render(value), None)
    return list(seen)


def _terms_only(field: str, values: list[str]) -> Query:
    chunks = [
        {"terms": {field: values[i : i + MAX_TERMS_PER_CLAUSE]}}
        for i in range(0, len(values), MAX_TERMS_PER_CLAUSE)
    ]
    return any_of(chunks)


def one_of(field: str, values: Iterable[str | UUID]) -> Query:
    """SQL ``field IN (values)``: FALSE for an empty list, never TRUE for NULL."""
    rendered = _unique(values)
    if not rendered:
        return MATCH_NONE
    return _terms_only(field, rendered)


def none_of(field: str, values: Iterable[str | UUID]) -> Query:
    """SQL ``field NOT IN (values)`` for a non-empty list: NULL is not TRUE."""
    rendered = _unique(values)
    if not rendered:
        return exists(field)
    return {"bool": {"filter": [exists(field)], "must_not": [_terms_only(field, rendered)]}}


def wildcard(field: str, pattern: str) -> Query:
    """An ES wildcard query (pattern already in ES syntax)."""
    return {"wildcard": {field: {"value": pattern}}}


TRIGRAM_FIELDS: dict[str, str] = {"key_ci": "key_tri"}
"""Folded fields with a trigram sibling (``services.trigrams``), on both indices."""


def contains(ci_field: str, value: str) -> Query:
    """Prefect's ``ILIKE '%value%'`` on the ASCII-lowercased sibling field: a phrase of
    trigrams when the field has them and the pattern is a plain substring test of three to
    `MAX_CHARS` characters, else a wildcard."""
    tokens = parse_like_pattern(f"%{value}%")  # parsed once for either query
    trigrams = TRIGRAM_FIELDS.get(ci_field)
    if trigrams is not None:
        literal = tokens_literal(tokens)
        if literal is not None and MIN_CHARS <= len(literal) <= MAX_CHARS:
            return {"match_phrase": {trigrams: " ".join(trigram_tokens(literal))}}
    return wildcard(ci_field, tokens_to_wildcard(tokens))


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch, computed with integers only."""
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        raise TranslationError("a filter timestamp has no time zone")
    return (moment - _EPOCH) // _ONE_MICROSECOND


def at_or_before(field: str, moment: datetime) -> Query:
    """``field <= moment`` (inclusive), NULL never matches."""
    return {"range": {field: {"lte": epoch_us(moment)}}}


def at_or_after(field: str, moment: datetime) -> Query:
    """``field >= moment`` (inclusive), NULL never matches."""
    return {"range": {field: {"gte": epoch_us(moment)}}}


def null_check(field: str, is_null: bool) -> Query:
    """``IS NULL`` when ``is_null`` else ``IS NOT NULL``."""
    return missing(field) if is_null else exists(field)


def flag(field: str, wanted: bool) -> Query:
    """A derived boolean flag; an absent flag counts as ``false``."""
    if wanted:
        return term(field, True)
    return {"bool": {"must_not": [term(field, True)]}}


# ------------------------------------------------------- generic leaf shapes


def _criteria(model: BaseModel, prefix: str, ci: str | None = None) -> list[Query]:
    """Criteria shared by many leaf filters, by field name.

    ``any_`` -> IN, ``not_any_`` -> NOT IN (skipped when empty), ``like_`` ->
    contains (skipped when empty), ``all_`` -> every tag (skipped when empty),
    ``before_``/``after_`` -> inclusive range, ``is_null_`` -> IS [NOT] NULL.
    Tag fields are recognised by having ``all_``.
    """
    data = model.__dict__
    out: list[Query] = []
    tags = "all_" in type(model).model_fields
    if tags and data.get("all_"):
        out.append(all_of(term(prefix, tag) for tag in data["all_"]))
    if data.get("any_") is not None:
        out.append(one_of(prefix, data["any_"]))
    if data.get("not_any_"):
        out.append(none_of(prefix, data["not_any_"]))
    if data.get("like_"):
        if ci is None:  # pragma: no cover - guarded by the callers
            raise TranslationError(f"no case-insensitive field for {prefix}")
        out.append(contains(ci, data["like_"]))
    if data.get("before_") is not None:
        out.append(at_or_before(prefix, data["before_"]))
    if data.get("after_") is not None:
        out.append(at_or_after(prefix, data["after_"]))
    if data.get("is_null_") is not None:
        out.append(null_check(prefix, data["is_null_"]))
    return out


def _leaf(model: BaseModel, prefix: str, ci: str | None = None) -> Query:
    return combine(_operator_of(model), _criteria(model, prefix, ci))


def _object(model: BaseModel, parts: list[Query]) -> Query:
    return combine(_operator_of(model), parts)


# ----------------------------------------------------------------- flow runs


def _flow_run_state(state: FlowRunFilterState | TaskRunFilterState, prefix: str) -> Query:
    # Prefect drops a sub-filter whose own criteria list is empty (it would be a
    # bare TRUE); that matters under ``or_``, where a TRUE would win.
    parts: list[Query] = []
    if state.type is not None:
        crit = _criteria(state.type, f"{prefix}.state_type")
        if crit:
            parts.append(all_of(crit))
    if state.name is not None:
        crit = _criteria(state.name, f"{prefix}.state_name")
        if crit:
            parts.append(all_of(crit))
    return _object(state, parts)


def flow_run_clause(flt: FlowRunFilter) -> Query:
    """Prefect's ``FlowRunFilter`` on the embedded ``fr`` object (no existence check)."""
    parts: list[Query] = []
    if flt.id is not None:
        parts.append(_leaf(flt.id, "fr.id"))
    if flt.name is not None:
        parts.append(_leaf(flt.name, "fr.name", "fr.name_ci"))
    if flt.tags is not None:
        parts.append(_leaf(flt.tags, "fr.tags"))
    if flt.deployment_id is not None:
        parts.append(_leaf(flt.deployment_id, "fr.deployment_id"))
    if flt.work_queue_name is not None:
        parts.append(_leaf(flt.work_queue_name, "fr.work_queue_name"))
    if flt.flow_version is not None:
        parts.append(_leaf(flt.flow_version, "fr.flow_version"))
    if flt.state is not None:
        parts.append(_flow_run_state(flt.state, "fr"))
    if flt.start_time is not None:
        st = flt.start_time
        crit: list[Query] = []
        if st.before_ is not None:
            crit.append(at_or_before("fr.start_or_expected_us", st.before_))
        if st.after_ is not None:
            crit.append(at_or_after("fr.start_or_expected_us", st.after_))
        if st.is_null_ is not None:
            crit.append(null_check("fr.start_time_us", st.is_null_))
        parts.append(combine(Operator.and_, crit))
    if flt.end_time is not None:
        parts.append(_leaf(flt.end_time, "fr.end_time_us"))
    if flt.expected_start_time is not None:
        parts.append(_leaf(flt.expected_start_time, "fr.expected_start_time_us"))
    if flt.next_scheduled_start_time is not None:
        parts.append(_leaf(flt.next_scheduled_start_time, "fr.next_scheduled_start_time_us"))
    if flt.parent_flow_run_id is not None:
        parts.append(_leaf(flt.parent_flow_run_id, "fr.parent_flow_run_id"))
    if flt.parent_task_run_id is not None:
        parts.append(_leaf(flt.parent_task_run_id, "fr.parent_task_run_id"))
    if flt.idempotency_key is not None:
        parts.append(_leaf(flt.idempotency_key, "fr.idempotency_key"))
    if flt.created_by is not None:
        cb = flt.created_by
        crit = []
        if cb.id_ is not None:
            crit.append(one_of("fr.created_by_id", cb.id_))
        if cb.type_ is not None:
            crit.append(one_of("fr.created_by_type", cb.type_))
        if cb.is_null_ is not None:
            crit.append(flag("fr.created_by_set", not cb.is_null_))
        parts.append(combine(cb.operator, crit))
    return _object(flt, parts)


# --------------------------------------------------------------------- flows


def flow_clause(flt: FlowFilter) -> Query:
    """Prefect's ``FlowFilter`` on the embedded ``flow`` object (no existence check)."""
    parts: list[Query] = []
    if flt.id is not None:
        parts.append(_leaf(flt.id, "flow.id"))
    if flt.deployment is not None:
        crit: list[Query] = []
        if flt.deployment.is_null_ is not None:
            crit.append(flag("flow.has_deployment", not flt.deployment.is_null_))
        parts.append(combine(flt.deployment.operator, crit))
    if flt.name is not None:
        parts.append(_leaf(flt.name, "flow.name", "flow.name_ci"))
    if flt.tags is not None:
        parts.append(_leaf(flt.tags, "flow.tags"))
    return _object(flt, parts)


# --------------------------------------------------------------- deployments


def deployment_clause(flt: DeploymentFilter) -> Query:
    """Prefect's ``DeploymentFilter`` on the embedded ``dep`` object (no existence check)."""
    parts: list[Query] = []
    if flt.id is not None:
        parts.append(_leaf(flt.id, "dep.id"))
    if flt.name is not None:
        parts.append(_leaf(flt.name, "dep.name", "dep.name_ci"))
    if flt.flow_or_deployment_name is not None:
        crit: list[Query] = []
        value = flt.flow_or_deployment_name.like_
        if value:
            crit.append(
                any_of([contains("dep.name_ci", value), contains("dep.flow_name_ci", value)])
            )
        parts.append(combine(Operator.and_, crit))
    if flt.paused is not None:
        crit = []
        if flt.paused.eq_ is not None:
            crit.append(term("dep.paused", flt.paused.eq_))
        parts.append(combine(Operator.and_, crit))
    if flt.tags is not None:
        parts.append(_leaf(flt.tags, "dep.tags"))
    if flt.work_queue_name is not None:
        parts.append(_leaf(flt.work_queue_name, "dep.work_queue_name"))
    # ``concurrency_limit`` is accepted and ignored, exactly as Prefect does; it
    # contributes nothing to the criteria list (not even a TRUE).
    return _object(flt, parts)


# ----------------------------------------------------------------- task runs


def _task_run_flow_run_id(flt: TaskRunFilterFlowRunId) -> Query:
    # ``is_null_`` defaults to False: True -> IS NULL (``any_`` ignored); False
    # without ``any_`` -> IS NOT NULL; otherwise ``any_`` (if given) -> IN.
    crit: list[Query] = []
    if flt.is_null_ is True:
        crit.append(missing("tr.flow_run_id"))
    elif flt.is_null_ is False and flt.any_ is None:
        crit.append(exists("tr.flow_run_id"))
    elif flt.any_ is not None:
        crit.append(one_of("tr.flow_run_id", flt.any_))
    return combine(flt.operator, crit)


def task_run_clause(flt: TaskRunFilter) -> Query:
    """Prefect's ``TaskRunFilter`` on the embedded ``tr`` object (no existence check)."""
    parts: list[Query] = []
    if flt.id is not None:
        parts.append(_leaf(flt.id, "tr.id"))
    if flt.name is not None:
        parts.append(_leaf(flt.name, "tr.name", "tr.name_ci"))
    if flt.tags is not None:
        parts.append(_leaf(flt.tags, "tr.tags"))
    if flt.state is not None:
        parts.append(_flow_run_state(flt.state, "tr"))
    if flt.start_time is not None:
        parts.append(_leaf(flt.start_time, "tr.start_time_us"))
    if flt.end_time is not None:
        parts.append(_leaf(flt.end_time, "tr.end_time_us"))
    if flt.expected_start_time is not None:
        parts.append(_leaf(flt.expected_start_time, "tr.expected_start_time_us"))
    if flt.subflow_runs is not None:
        crit: list[Query] = []
        if flt.subflow_runs.exists_ is not None:
            crit.append(flag("tr.has_subflow_run", flt.subflow_runs.exists_))
        parts.append(combine(Operator.and_, crit))
    if flt.flow_run_id is not None:
        parts.append(_task_run_flow_run_id(flt.flow_run_id))
    return _object(flt, parts)


# ----------------------------------------------------------------- artifacts


def artifact_clause(flt: ArtifactFilter | ArtifactCollectionFilter) -> Query:
    """The artifact-level filter on the document's own top-level fields."""
    parts: list[Query] = []
    if isinstance(flt, ArtifactFilter):
        if flt.id is not None:
            parts.append(_leaf(flt.id, "id"))
    elif flt.latest_id is not None:
        parts.append(_leaf(flt.latest_id, "latest_id"))
    if flt.key is not None:
        key = flt.key
        crit = _criteria(key, "key", "key_ci")
        if key.exists_ is not None:
            crit.append(null_check("key", not key.exists_))
        parts.append(combine(Operator.and_, crit))
    if flt.flow_run_id is not None:
        parts.append(_leaf(flt.flow_run_id, "flow_run_id"))
    if flt.task_run_id is not None:
        parts.append(_leaf(flt.task_run_id, "task_run_id"))
    if flt.type is not None:
        parts.append(_leaf(flt.type, "type"))
    return _object(flt, parts)


def _relations(
    flow_runs: FlowRunFilter | None,
    task_runs: TaskRunFilter | None,
    flows: FlowFilter | None,
    deployments: DeploymentFilter | None,
) -> list[Query]:
    # Prefect adds the flow-run EXISTS as soon as any of the three flow-side
    # filters is given, even an empty object (a pydantic model is always truthy).
    out: list[Query] = []
    if flow_runs is not None or flows is not None or deployments is not None:
        joined: list[Query] = [exists("fr.id")]
        if flow_runs is not None:
            joined.append(flow_run_clause(flow_runs))
        if flows is not None:
            joined.extend([exists("flow.id"), flow_clause(flows)])
        if deployments is not None:
            joined.extend([exists("dep.id"), deployment_clause(deployments)])
        out.append(all_of(joined))
    if task_runs is not None:
        out.append(all_of([exists("tr.id"), task_run_clause(task_runs)]))
    return out


def _top_level(clauses: list[Query]) -> Query:
    combined = all_of(clauses)
    if _is_true(combined):
        return {"bool": {"filter": []}}
    if "bool" in combined and set(combined["bool"]) == {"filter"}:
        return combined
    return {"bool": {"filter": [combined]}}


def translate_artifact_query(
    artifacts: ArtifactFilter | None = None,
    flow_runs: FlowRunFilter | None = None,
    task_runs: TaskRunFilter | None = None,
    flows: FlowFilter | None = None,
    deployments: DeploymentFilter | None = None,
) -> Query:
    """The ``bool`` query selecting live artifact documents that Prefect would return."""
    clauses: list[Query] = [term("live", True)]
    if artifacts is not None:
        clauses.append(artifact_clause(artifacts))
    clauses.extend(_relations(flow_runs, task_runs, flows, deployments))
    return _top_level(clauses)


def translate_collection_query(
    artifacts: ArtifactCollectionFilter | None = None,
    flow_runs: FlowRunFilter | None = None,
    task_runs: TaskRunFilter | None = None,
    flows: FlowFilter | None = None,
    deployments: DeploymentFilter | None = None,
) -> Query:
    """The ``bool`` query selecting live collection documents that Prefect would return."""
    clauses: list[Query] = [term("live", True)]
    if artifacts is not None:
        clauses.append(artifact_clause(artifacts))
    clauses.extend(_relations(flow_runs, task_runs, flows, deployments))
    return _top_level(clauses)

"""Property test: translated queries select exactly what Prefect's SQL would.

Random artifact/collection documents are matched two ways: through the ES query
(evaluated in memory by ``es_eval``) and through ``prefect_match``, a direct
three-valued-logic reading of Prefect 3.9.1's filter code (``None`` is SQL NULL),
evaluated on the raw (not lowercased, not derived) values.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from es_eval import evaluate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sql_ref import pg_ilike

from query.like import ascii_lower
from query.translate import translate_artifact_query, translate_collection_query
from services.prefect import filters as f
from services.trigrams import trigram_text

Tri = bool | None

UUIDS = [
    "00000000-0000-0000-0000-00000000000a",
    "00000000-0000-0000-0000-00000000000b",
    "00000000-0000-0000-0000-00000000000c",
]
NAMES = ["Alpha", "alpha-2", "Beta", "b_ta", "g%m", "x\\y", "", "ÄLPHA", "a~lph alpha", "aaaa"]
LIKES = ["a", "A", "%", "_", "b_t", "\\", "x\\\\y", "%m", "ph", "ä", "", "LP"]
# three characters or more: answered by trigram phrases on `key_tri` when plain
LIKES += ["alp", "LPHA", "pha-", "~lp", "h a", "ÄLP", "aaa", "aaaa", "a%ph", "al_h", "lph\\"]
TAGS = ["t1", "t2", "t3"]
STATES = ["COMPLETED", "FAILED", "RUNNING"]
TIMES = [0, 1_000_000, 2_000_001]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).isoformat()


# ------------------------------------------------------------ 3-valued logic


def AND(*xs: Tri) -> Tri:  # noqa: N802
    if any(x is False for x in xs):
        return False
    if any(x is None for x in xs):
        return None
    return True


def OR(*xs: Tri) -> Tri:  # noqa: N802
    if any(x is True for x in xs):
        return True
    if any(x is None for x in xs):
        return None
    return False


def combine(op: f.Operator, xs: list[Tri]) -> Tri:
    if not xs:
        return True
    return OR(*xs) if op is f.Operator.or_ else AND(*xs)


def in_(value: Any, options: list[Any]) -> Tri:
    if not options:
        return False
    if value is None:
        return None
    return value in [str(o) for o in options]


def not_in(value: Any, options: list[Any]) -> Tri:
    if value is None:
        return None
    return value not in [str(o) for o in options]


def ilike(value: str | None, like: str) -> Tri:
    return None if value is None else pg_ilike(value, f"%{like}%")


def le(value: int | None, bound: datetime) -> Tri:
    return None if value is None else value <= (bound - EPOCH) // timedelta(microseconds=1)


def ge(value: int | None, bound: datetime) -> Tri:
    return None if value is None else value >= (bound - EPOCH) // timedelta(microseconds=1)


def tags_of(row: dict[str, Any]) -> list[str]:
    return row.get("tags") or []


def std(m: Any, row: dict[str, Any], col: str, name_col: str | None = None) -> list[Tri]:
    """any_/not_any_/like_/before_/after_/is_null_ on one column, Prefect's skip rules."""
    out: list[Tri] = []
    v = row.get(col)
    d = m.__dict__
    if d.get("any_") is not None:
        out.append(in_(v, d["any_"]))
    if d.get("not_any_"):
        out.append(not_in(v, d["not_any_"]))
    if d.get("like_"):
        out.append(ilike(row.get(name_col or col), d["like_"]))
    if d.get("before_") is not None:
        out.append(le(v, d["before_"]))
    if d.get("after_") is not None:
        out.append(ge(v, d["after_"]))
    if d.get("is_null_") is not None:
        out.append(v is None if d["is_null_"] else v is not None)
    return out


def tag_crit(m: Any, row: dict[str, Any]) -> Tri:
    tags = tags_of(row)
    out: list[Tri] = []
    if m.all_:
        out.append(all(t in tags for t in m.all_))
    if getattr(m, "any_", None) is not None:
        out.append(any(t in tags for t in m.any_))
    if m.is_null_ is not None:
        out.append((tags == []) if m.is_null_ else (tags != []))
    return combine(m.operator, out)


def state_crit(m: Any, row: dict[str, Any]) -> Tri:
    parts: list[Tri] = []
    for sub, col in ((m.type, "state_type"), (m.name, "state_name")):
        if sub is not None:
            crit = std(sub, row, col)
            if crit:  # an empty sub-filter is dropped
                parts.append(AND(*crit))
    return combine(m.operator, parts)


def fr_pred(m: f.FlowRunFilter, fr: dict[str, Any]) -> Tri:
    p: list[Tri] = []
    if m.id is not None:
        p.append(AND(*std(m.id, fr, "id")))
    if m.name is not None:
        p.append(AND(*std(m.name, fr, "name")))
    if m.tags is not None:
        p.append(tag_crit(m.tags, fr))
    if m.deployment_id is not None:
        p.append(combine(m.deployment_id.operator, std(m.deployment_id, fr, "deployment_id")))
    if m.work_queue_name is not None:
        p.append(combine(m.work_queue_name.operator, std(m.work_queue_name, fr, "work_queue_name")))
    if m.flow_version is not None:
        p.append(AND(*std(m.flow_version, fr, "flow_version")))
    if m.state is not None:
        p.append(state_crit(m.state, fr))
    if m.start_time is not None:
        st_ = m.start_time
        start = fr.get("start_time_us")
        coalesced = start if start is not None else fr.get("expected_start_time_us")
        c: list[Tri] = []
        if st_.before_ is not None:
            c.append(le(coalesced, st_.before_))
        if st_.after_ is not None:
            c.append(ge(coalesced, st_.after_))
        if st_.is_null_ is not None:
            c.append(start is None if st_.is_null_ else start is not None)
        p.append(AND(*c))
    if m.end_time is not None:
        p.append(AND(*std(m.end_time, fr, "end_time_us")))
    if m.expected_start_time is not None:
        p.append(AND(*std(m.expected_start_time, fr, "expected_start_time_us")))
    if m.next_scheduled_start_time is not None:
        p.append(AND(*std(m.next_scheduled_start_time, fr, "next_scheduled_start_time_us")))
    if m.parent_flow_run_id is not None:
        c = []
        if m.parent_flow_run_id.any_ is not None:
            parent = fr.get("parent_flow_run_id")
            c.append(parent is not None and parent in [str(u) for u in m.parent_flow_run_id.any_])
        p.append(combine(m.parent_flow_run_id.operator, c))
    if m.parent_task_run_id is not None:
        p.append(
            combine(
                m.parent_task_run_id.operator, std(m.parent_task_run_id, fr, "parent_task_run_id")
            )
        )
    if m.idempotency_key is not None:
        p.append(AND(*std(m.idempotency_key, fr, "idempotency_key")))
    if m.created_by is not None:
        cb = m.created_by
        c = []
        if cb.id_ is not None:
            c.append(in_(fr.get("created_by_id"), cb.id_))
        if cb.type_ is not None:
            c.append(in_(fr.get("created_by_type"), cb.type_))
        if cb.is_null_ is not None:
            is_set = bool(fr.get("created_by_set"))
            c.append(not is_set if cb.is_null_ else is_set)
        p.append(combine(cb.operator, c))
    return combine(m.operator, p)


def flow_pred(m: f.FlowFilter, flow: dict[str, Any]) -> Tri:
    p: list[Tri] = []
    if m.id is not None:
        p.append(AND(*std(m.id, flow, "id")))
    if m.deployment is not None:
        c: list[Tri] = []
        if m.deployment.is_null_ is not None:
            has = bool(flow.get("has_deployment"))
            c.append(not has if m.deployment.is_null_ else has)
        p.append(combine(m.deployment.operator, c))
    if m.name is not None:
        p.append(AND(*std(m.name, flow, "name")))
    if m.tags is not None:
        p.append(tag_crit(m.tags, flow))
    return combine(m.operator, p)


def dep_pred(m: f.DeploymentFilter, dep: dict[str, Any]) -> Tri:
    p: list[Tri] = []
    if m.id is not None:
        p.append(AND(*std(m.id, dep, "id")))
    if m.name is not None:
        p.append(AND(*std(m.name, dep, "name")))
    if m.flow_or_deployment_name is not None:
        c: list[Tri] = []
        like = m.flow_or_deployment_name.like_
        if like:
            own_flow = dep.get("_flow_name")
            flow_exists = own_flow is not None and ilike(own_flow, like) is True
            c.append(OR(ilike(dep.get("name"), like), flow_exists))
        p.append(AND(*c))
    if m.paused is not None:
        c = []
        if m.paused.eq_ is not None:
            c.append(dep.get("paused") is m.paused.eq_)
        p.append(AND(*c))
    if m.tags is not None:
        p.append(tag_crit(m.tags, dep))
    if m.work_queue_name is not None:
        p.append(AND(*std(m.work_queue_name, dep, "work_queue_name")))
    return combine(m.operator, p)


def tr_pred(m: f.TaskRunFilter, tr: dict[str, Any]) -> Tri:
    p: list[Tri] = []
    if m.id is not None:
        p.append(AND(*std(m.id, tr, "id")))
    if m.name is not None:
        p.append(AND(*std(m.name, tr, "name")))
    if m.tags is not None:
        p.append(tag_crit(m.tags, tr))
    if m.state is not None:
        p.append(state_crit(m.state, tr))
    if m.start_time is not None:
        p.append(AND(*std(m.start_time, tr, "start_time_us")))
    if m.end_time is not None:
        p.append(AND(*std(m.end_time, tr, "end_time_us")))
    if m.expected_start_time is not None:
        p.append(AND(*std(m.expected_start_time, tr, "expected_start_time_us")))
    if m.subflow_runs is not None:
        c: list[Tri] = []
        if m.subflow_runs.exists_ is not None:
            has = bool(tr.get("has_subflow_run"))
            c.append(has if m.subflow_runs.exists_ else not has)
        p.append(AND(*c))
    if m.flow_run_id is not None:
        fri = m.flow_run_id
        v = tr.get("flow_run_id")
        c = []
        if fri.is_null_ is True:
            c.append(v is None)
        elif fri.is_null_ is False and fri.any_ is None:
            c.append(v is not None)
        elif fri.any_ is not None:
            c.append(in_(v, fri.any_))
        p.append(combine(fri.operator, c))
    return combine(m.operator, p)


def artifact_pred(m: f.ArtifactFilter | f.ArtifactCollectionFilter, doc: dict[str, Any]) -> Tri:
    p: list[Tri] = []
    if isinstance(m, f.ArtifactFilter):
        if m.id is not None:
            p.append(AND(*std(m.id, doc, "id")))
    elif m.latest_id is not None:
        p.append(AND(*std(m.latest_id, doc, "latest_id")))
    if m.key is not None:
        c = std(m.key, doc, "key")
        if m.key.exists_ is not None:
            c.append(doc.get("key") is not None if m.key.exists_ else doc.get("key") is None)
        p.append(AND(*c))
    if m.flow_run_id is not None:
        p.append(AND(*std(m.flow_run_id, doc, "flow_run_id")))
    if m.task_run_id is not None:
        p.append(AND(*std(m.task_run_id, doc, "task_run_id")))
    if m.type is not None:
        p.append(AND(*std(m.type, doc, "type")))
    return combine(m.operator, p)


def prefect_match(doc: dict[str, Any], filters: dict[str, Any], collection: bool) -> bool:
    if not collection and doc.get("live") is not True:
        return False
    conds: list[Tri] = []
    artifacts = filters.get("artifacts")
    if artifacts is not None:
        conds.append(artifact_pred(artifacts, doc))
    flow_runs, flows, deps = (
        filters.get("flow_runs"),
        filters.get("flows"),
        filters.get("deployments"),
    )
    if flow_runs is not None or flows is not None or deps is not None:
        fr = doc.get("fr")
        row: list[Tri] = [fr is not None]
        if fr is not None:
            if flow_runs is not None:
                row.append(fr_pred(flow_runs, fr))
            if flows is not None:
                flow = doc.get("flow")
                row.append(flow is not None and flow_pred(flows, flow) is True)
            if deps is not None:
                dep = doc.get("dep")
                row.append(dep is not None and dep_pred(deps, dep) is True)
        conds.append(AND(*row) is True)  # EXISTS is never NULL
    task_runs = filters.get("task_runs")
    if task_runs is not None:
        tr = doc.get("tr")
        conds.append(tr is not None and tr_pred(task_runs, tr) is True)
    return AND(*conds) is True


# ------------------------------------------------------------- documents


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


UUID = st.sampled_from(UUIDS)
NAME = st.sampled_from(NAMES)
TAG_LIST = st.lists(st.sampled_from(TAGS), max_size=3, unique=True)
TIME = st.sampled_from(TIMES)


def with_ci(obj: dict[str, Any], field: str, ci: str) -> dict[str, Any]:
    if obj.get(field) is not None:
        obj[ci] = ascii_lower(obj[field])
    return obj


def prune(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v is not None and v != []}


@st.composite
def flow_runs_docs(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(opt(TIME))
    expected = draw(opt(TIME))
    created_by_set = draw(st.booleans())
    fr = {
        "id": draw(UUID),
        "name": draw(NAME),
        "flow_id": draw(UUID),
        "deployment_id": draw(opt(UUID)),
        "work_queue_name": draw(opt(st.sampled_from(["q1", "q2"]))),
        "flow_version": draw(opt(st.sampled_from(["1", "2"]))),
        "tags": draw(TAG_LIST),
        "state_type": draw(opt(st.sampled_from(STATES))),
        "state_name": draw(opt(st.sampled_from(["Late", "Done"]))),
        "start_time_us": start,
        "end_time_us": draw(opt(TIME)),
        "expected_start_time_us": expected,
        "next_scheduled_start_time_us": draw(opt(TIME)),
        "start_or_expected_us": start if start is not None else expected,
        "parent_task_run_id": draw(opt(UUID)),
        "parent_flow_run_id": draw(opt(UUID)),
        "idempotency_key": draw(opt(st.sampled_from(["i1", "i2"]))),
        "created_by_set": created_by_set,
        "created_by_id": draw(opt(UUID)) if created_by_set else None,
        "created_by_type": draw(opt(st.sampled_from(["DEPLOYMENT", "AUTOMATION"])))
        if created_by_set
        else None,
    }
    return prune(with_ci(fr, "name", "name_ci"))


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 9)) == 0:
        return {"id": draw(UUID), "live": False, "version": 1}
    key = draw(opt(NAME))
    doc: dict[str, Any] = {
        "id": draw(UUID),
        "latest_id": draw(UUID),
        "live": True,
        "key": key,
        "type": draw(opt(st.sampled_from(["table", "markdown"]))),
        "flow_run_id": draw(opt(UUID)),
        "task_run_id": draw(opt(UUID)),
        "created_us": 1,
        "updated_us": 1,
    }
    with_ci(doc, "key", "key_ci")
    if doc.get("key_ci") is not None:
        doc["key_tri"] = trigram_text(doc["key_ci"])
    if draw(st.booleans()):
        fr = draw(flow_runs_docs())
        doc["fr"] = fr
        if draw(st.booleans()):
            flow = {
                "id": fr["flow_id"],
                "name": draw(NAME),
                "tags": draw(TAG_LIST),
                "has_deployment": draw(st.booleans()),
            }
            doc["flow"] = prune(with_ci(flow, "name", "name_ci"))
        if "deployment_id" in fr and draw(st.booleans()):
            own_flow = draw(opt(NAME))
            dep = {
                "id": fr["deployment_id"],
                "name": draw(NAME),
                "flow_id": draw(UUID),
                "_flow_name": own_flow,
                "flow_name_ci": None if own_flow is None else ascii_lower(own_flow),
                "paused": draw(st.booleans()),
                "tags": draw(TAG_LIST),
                "work_queue_name": draw(opt(st.sampled_from(["q1", "q2"]))),
            }
            doc["dep"] = prune(with_ci(dep, "name", "name_ci"))
    if draw(st.booleans()):
        tr = {
            "id": draw(UUID),
            "name": draw(NAME),
            "flow_run_id": draw(opt(UUID)),
            "tags": draw(TAG_LIST),
            "state_type": draw(opt(st.sampled_from(STATES))),
            "state_name": draw(opt(st.sampled_from(["Late", "Done"]))),
            "start_time_us": draw(opt(TIME)),
            "end_time_us": draw(opt(TIME)),
            "expected_start_time_us": draw(opt(TIME)),
            "has_subflow_run": draw(st.booleans()),
        }
        doc["tr"] = prune(with_ci(tr, "name", "name_ci"))
    return prune(doc)


# --------------------------------------------------------------- filters


def obj(operator: bool = False, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    optional = dict(fields)
    if operator:
        optional["operator"] = st.sampled_from(["and_", "or_"])
    return st.fixed_dictionaries({}, optional=optional)


def small_list(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, max_size=2)


IDS = small_list(UUID)
STRS = small_list(st.sampled_from(NAMES[:4]))
LIKE = st.sampled_from(LIKES)
BOOL = opt(st.booleans())
WHEN = st.sampled_from([iso(t) for t in TIMES] + ["1970-01-01T00:00:01"])
TAGS_ = small_list(st.sampled_from(TAGS))


def times(is_null: bool) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {"before_": WHEN, "after_": WHEN}
    if is_null:
        fields["is_null_"] = BOOL
    return obj(**fields)


STATE = obj(
    True,
    type=obj(
        any_=small_list(st.sampled_from(STATES)), not_any_=small_list(st.sampled_from(STATES))
    ),
    name=obj(
        any_=small_list(st.sampled_from(["Late", "Done"])),
        not_any_=small_list(st.sampled_from(["Late"])),
    ),
)
FLOW_RUNS = obj(
    True,
    id=obj(any_=IDS, not_any_=IDS),
    name=obj(any_=STRS, like_=LIKE),
    tags=obj(True, all_=TAGS_, any_=TAGS_, is_null_=BOOL),
    deployment_id=obj(True, any_=IDS, is_null_=BOOL),
    work_queue_name=obj(True, any_=small_list(st.sampled_from(["q1", "q2"])), is_null_=BOOL),
    state=STATE,
    flow_version=obj(any_=small_list(st.sampled_from(["1", "2"]))),
    start_time=times(True),
    end_time=times(True),
    expected_start_time=times(False),
    next_scheduled_start_time=times(False),
    parent_flow_run_id=obj(True, any_=IDS),
    parent_task_run_id=obj(True, any_=IDS, is_null_=BOOL),
    idempotency_key=obj(
        any_=small_list(st.sampled_from(["i1", "i2"])), not_any_=small_list(st.sampled_from(["i1"]))
    ),
    created_by=obj(
        True, id_=IDS, type_=small_list(st.sampled_from(["DEPLOYMENT", "X"])), is_null_=BOOL
    ),
)
TASK_RUNS = obj(
    True,
    id=obj(any_=IDS),
    name=obj(any_=STRS, like_=LIKE),
    tags=obj(True, all_=TAGS_, is_null_=BOOL),
    state=obj(
        True,
        type=obj(any_=small_list(st.sampled_from(STATES))),
        name=obj(any_=small_list(st.sampled_from(["Late", "Done"]))),
    ),
    start_time=times(True),
    end_time=times(True),
    expected_start_time=times(False),
    subflow_runs=obj(exists_=BOOL),
    flow_run_id=obj(True, any_=IDS, is_null_=BOOL),
)
FLOWS = obj(
    True,
    id=obj(any_=IDS, not_any_=IDS),
    deployment=obj(True, is_null_=BOOL),
    name=obj(any_=STRS, like_=LIKE),
    tags=obj(True, all_=TAGS_, is_null_=BOOL),
)
DEPLOYMENTS = obj(
    True,
    id=obj(any_=IDS, not_any_=IDS),
    name=obj(any_=STRS, like_=LIKE),
    flow_or_deployment_name=obj(like_=LIKE),
    paused=obj(eq_=BOOL),
    tags=obj(True, all_=TAGS_, any_=TAGS_, is_null_=BOOL),
    work_queue_name=obj(any_=small_list(st.sampled_from(["q1", "q2"]))),
    concurrency_limit=obj(ge_=st.integers(0, 3), is_null_=BOOL),
)
KEY = obj(any_=STRS, like_=LIKE, exists_=BOOL)
TYPE = obj(
    any_=small_list(st.sampled_from(["table", "markdown"])),
    not_any_=small_list(st.sampled_from(["table"])),
)
ARTIFACTS = obj(
    True, id=obj(any_=IDS), key=KEY, flow_run_id=obj(any_=IDS), task_run_id=obj(any_=IDS), type=TYPE
)
COLLECTIONS = obj(
    True,
    latest_id=obj(any_=IDS),
    key=KEY,
    flow_run_id=obj(any_=IDS),
    task_run_id=obj(any_=IDS),
    type=TYPE,
)


def request(artifacts: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return obj(
        artifacts=artifacts,
        flow_runs=FLOW_RUNS,
        task_runs=TASK_RUNS,
        flows=FLOWS,
        deployments=DEPLOYMENTS,
    )


MODELS: dict[str, type[Any]] = {
    "flow_runs": f.FlowRunFilter,
    "task_runs": f.TaskRunFilter,
    "flows": f.FlowFilter,
    "deployments": f.DeploymentFilter,
}


def parse(raw: dict[str, Any], collection: bool) -> dict[str, Any]:
    models = dict(MODELS)
    models["artifacts"] = f.ArtifactCollectionFilter if collection else f.ArtifactFilter
    return {k: models[k].model_validate(v) for k, v in raw.items()}


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DOCS = st.lists(documents(), min_size=1, max_size=12)
KINDS = {
    "flow_runs": FLOW_RUNS,
    "task_runs": TASK_RUNS,
    "flows": FLOWS,
    "deployments": DEPLOYMENTS,
}


def check(raw: dict[str, Any], docs: list[dict[str, Any]], collection: bool) -> None:
    filters = parse(raw, collection=collection)
    translate = translate_collection_query if collection else translate_artifact_query
    query = translate(**filters)
    for doc in docs:
        if collection and not doc.get("live"):
            continue  # collection documents have no delete markers
        assert evaluate(query, doc) is prefect_match(doc, filters, collection), (raw, doc, query)


@SETTINGS
@given(raw=request(ARTIFACTS), docs=DOCS)
def test_artifact_queries_match_prefect_semantics(
    raw: dict[str, Any], docs: list[dict[str, Any]]
) -> None:
    check(raw, docs, collection=False)


@SETTINGS
@given(raw=request(COLLECTIONS), docs=DOCS)
def test_collection_queries_match_prefect_semantics(
    raw: dict[str, Any], docs: list[dict[str, Any]]
) -> None:
    check(raw, docs, collection=True)


@pytest.mark.parametrize("kind", [*KINDS, "artifacts", "collections"])
@SETTINGS
@given(data=st.data(), docs=DOCS)
def test_one_filter_kind_at_a_time(
    kind: str, data: st.DataObject, docs: list[dict[str, Any]]
) -> None:
    # One kind per request keeps the match rate high, so both outcomes are exercised.
    collection = kind == "collections"
    if kind in KINDS:
        raw = {kind: data.draw(KINDS[kind])}
    else:
        raw = {"artifacts": data.draw(COLLECTIONS if collection else ARTIFACTS)}
    check(raw, docs, collection=collection)


@settings(max_examples=300, deadline=None)
@given(raw=request(ARTIFACTS))
def test_some_generated_filters_match_something(raw: dict[str, Any]) -> None:
    # Guards the generators: queries must be well formed for the evaluator.
    filters = parse(raw, collection=False)
    evaluate(translate_artifact_query(**filters), {"id": UUIDS[0], "live": True})

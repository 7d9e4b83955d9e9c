"""An independent, brute-force oracle of the final documents of a dataset.

It reads only the dataset's final snapshots and recomputes every join and derived field
by scanning all entities (quadratic, fine for test sizes): nothing here shares the
indexer's edges, counters or fan-out. Field encodings (timestamps as microseconds,
`name_ci`, ...) come from services/documents.py, which the query service also relies on.
"""

from __future__ import annotations

from typing import Any

from datagen.dataset import Dataset
from services.contract import (
    ArtifactData,
    DeploymentData,
    FlowData,
    FlowRunData,
    TaskRunData,
)
from services.documents import (
    artifact_own_fields,
    collection_id,
    deployment_part,
    flow_part,
    flow_run_part,
    task_run_part,
)
from services.trigrams import trigram_text

Doc = dict[str, Any]


def expected_documents(dataset: Dataset) -> tuple[dict[str, Doc], dict[str, Doc]]:
    """(artifact id -> document, collection id -> document) without versions."""
    flows = {f["id"]: flow_part(FlowData.model_validate(f)) for f in dataset.flows}
    deps = {d["id"]: deployment_part(DeploymentData.model_validate(d)) for d in dataset.deployments}
    runs = {r["id"]: flow_run_part(FlowRunData.model_validate(r)) for r in dataset.flow_runs}
    tasks = {t["id"]: task_run_part(TaskRunData.model_validate(t)) for t in dataset.task_runs}

    def refs(flow_run_id: str | None, task_run_id: str | None) -> Doc:
        out: Doc = {}
        run = runs.get(flow_run_id or "")
        if run is not None:
            fr = dict(run)
            parent = tasks.get(fr.get("parent_task_run_id") or "")
            if parent is not None and parent.get("flow_run_id") is not None:
                fr["parent_flow_run_id"] = parent["flow_run_id"]
            out["fr"] = fr
            flow = flows.get(fr["flow_id"])
            if flow is not None:
                has = any(d["flow_id"] == flow["id"] for d in deps.values())
                out["flow"] = {**flow, "has_deployment": has}
            dep = deps.get(fr.get("deployment_id") or "")
            if dep is not None:
                dep = dict(dep)
                own_flow = flows.get(dep["flow_id"])
                if own_flow is not None:
                    dep["flow_name_ci"] = own_flow["name_ci"]
                out["dep"] = dep
        task = tasks.get(task_run_id or "")
        if task is not None:
            subflow = any(r.get("parent_task_run_id") == task["id"] for r in runs.values())
            out["tr"] = {**task, "has_subflow_run": subflow}
        return out

    artifacts: dict[str, Doc] = {}
    for art in dataset.artifacts:
        own = artifact_own_fields(ArtifactData.model_validate(art), 0)
        own.pop("version")
        if own.get("key_ci") is not None:
            own["key_tri"] = trigram_text(own["key_ci"])
        artifacts[art["id"]] = {**own, **refs(art.get("flow_run_id"), art.get("task_run_id"))}
    collections: dict[str, Doc] = {}
    for col in dataset.collections():
        latest = artifacts[col["latest_id"]]
        members = [a for a in artifacts.values() if a.get("key") == col["key"]]
        earliest = min(a["created_us"] for a in members)
        cid = collection_id(col["key"])
        doc = {
            k: latest.get(k)
            for k in ("type", "description", "data", "metadata_", "flow_run_id", "task_run_id")
        }
        collections[cid] = {
            **doc,
            "id": cid,
            "key": col["key"],
            "latest_id": col["latest_id"],
            "created": col["created"],
            "updated": col["updated"],
            "created_us": earliest,
            "updated_us": latest["created_us"],
            "key_ci": latest["key_ci"],
            "key_tri": latest["key_tri"],
            "live": True,
            **refs(latest.get("flow_run_id"), latest.get("task_run_id")),
        }
    return artifacts, collections


def comparable(docs: dict[str, Doc]) -> dict[str, Doc]:
    """Documents without the fields a stream's versions decide (`version`, sort ids) and
    the searchable text (tested on its own)."""
    drop = {"version", "id_hi", "id_lo", "x", "v"}  # `x`: tests/unit/test_search_text.py
    return {i: {k: v for k, v in d.items() if k not in drop} for i, d in docs.items()}

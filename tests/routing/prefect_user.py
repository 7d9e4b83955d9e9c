"""What a Prefect user does through the one URL; run as a subprocess by test_one_url.py.

``PREFECT_API_URL`` points at the proxy. Two commands, each printing one JSON object:

* ``run KEY``: runs a flow whose task and flow body create artifacts (Prefect's engine:
  flow run, states, task run events over the websocket, artifact writes), then waits,
  with a bound, until the server has recorded the task run from those events;
* ``read KEY FLOW_RUN_ID``: Prefect's client reads the artifacts back (``read_artifacts``,
  ``read_latest_artifacts``) and the flow run, flow and task runs.

The test decides from the proxy's access log which upstream answered each call.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.sorting import ArtifactCollectionSort, ArtifactSort


@task
def square(key: str, n: int) -> int:
    """A task that leaves a table artifact under its own task run."""
    create_table_artifact(key=f"{key}-table", table=[{"n": n, "square": n * n}])
    return n * n


@flow
def report(key: str, n: int) -> int:
    """A flow run with a markdown artifact of its own."""
    value = square(key, n)
    create_markdown_artifact(key=key, markdown=f"# {key}\n\nsquare of {n}: {value}")
    return value


async def _wait_for_task_run(flow_run_id: uuid.UUID) -> list[str]:
    async with get_client() as client:
        deadline = time.monotonic() + 90
        while True:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if runs or time.monotonic() > deadline:
                return [str(r.id) for r in runs]
            await asyncio.sleep(0.5)


def run(key: str) -> dict[str, Any]:
    state = report.with_options(flow_run_name=f"run-{key}")(key, 7, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    task_runs = asyncio.run(_wait_for_task_run(flow_run_id))
    return {
        "state": state.type.value,
        "result": state.result(),
        "flow_run_id": str(flow_run_id),
        "task_run_ids": task_runs,
    }


async def read(key: str, flow_run_id: str) -> dict[str, Any]:
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=key)),
            sort=ArtifactSort.KEY_ASC,
        )
        latest = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(like_=key)),
            # not the default ID_DESC: collection ids are the index's own (README, One URL)
            sort=ArtifactCollectionSort.KEY_ASC,
        )
        flow_run = await client.read_flow_run(uuid.UUID(flow_run_id))
        flow_ = await client.read_flow(flow_run.flow_id)
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    return {
        "artifacts": [a.model_dump(mode="json") for a in artifacts],
        "latest": [a.model_dump(mode="json") for a in latest],
        "flow_run": flow_run.model_dump(mode="json"),
        "flow": flow_.model_dump(mode="json"),
        "task_runs": [t.model_dump(mode="json") for t in task_runs],
    }


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "run":
        out = run(*args)
    elif command == "read":
        out = asyncio.run(read(*args))
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

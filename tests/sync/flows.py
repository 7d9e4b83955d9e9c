"""Real Prefect flows for tests/sync, run with Prefect's SDK against a live server.

``python -m tests.sync.flows first|second`` with ``PREFECT_API_URL`` set. `first`:
flows with tasks, a subflow, markdown / table / link / progress artifacts with and
without keys, a task that fails once and succeeds on its retry, a flow that fails.
`second`: a deployment (paused afterwards), a flow run created from it with an artifact,
another flow run, and the latest `etl-report` artifact deleted through Prefect's client.
`delete <id>`: that artifact deleted through Prefect's client. Prints one JSON line of
what it did.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


@task
def extract(n: int) -> list[int]:
    create_table_artifact(
        table=[{"n": i, "square": i * i} for i in range(n)],
        key="extract-table",
        description="extracted rows",
    )
    return list(range(n))


@task(retries=1, retry_delay_seconds=0)
def flaky(attempts: dict[str, int]) -> str:
    attempts["n"] += 1
    if attempts["n"] == 1:
        raise RuntimeError("the first attempt fails")
    create_link_artifact(link="https://example.com/report", link_text="report", key="flaky-link")
    return "ok"


@task
def transform(rows: list[int]) -> int:
    create_table_artifact(table={"value": rows, "double": [2 * r for r in rows]})  # no key
    return sum(rows)


@task
def explode() -> None:
    raise ValueError("this task always fails")


@flow(name="child-flow")
def child(x: int) -> int:
    create_markdown_artifact(markdown=f"# child {x}\n\n*nested*", description="from a subflow")
    return 2 * x


@flow(name="etl")
def etl(n: int = 3) -> int:
    progress = create_progress_artifact(progress=0.0, key="etl-progress", description="steps")
    rows = extract(n)
    update_progress_artifact(progress, 40.0)
    flaky({"n": 0})
    total = transform(rows)
    child(total)
    create_markdown_artifact(markdown=f"# report\n\ntotal **{total}**", key="etl-report")
    update_progress_artifact(progress, 100.0)
    return total


@flow(name="failing")
def failing() -> None:
    create_markdown_artifact(markdown="about to fail", key="failing-report")
    create_progress_artifact(progress=12.5)  # no key
    explode()


def first() -> dict[str, Any]:
    totals = [etl(2), etl(3)]
    state = failing(return_state=True)
    return {"totals": totals, "failing": state.type.value}


async def second() -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("etl")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name="etl-nightly",
            tags=["nightly"],
            work_queue_name="default",
            concurrency_limit=2,
        )
        run = await client.create_flow_run_from_deployment(deployment_id, tags=["scheduled"])
        await client.create_artifact(
            ArtifactCreate(
                key="deployment-note",
                type="markdown",
                data="# planned",
                description="on a scheduled run",
                flow_run_id=run.id,
            )
        )
        await client.pause_deployment(deployment_id)
        etl(4)
        reports = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["etl-report"])),
            sort=ArtifactSort.CREATED_DESC,
        )
        await client.delete_artifact(reports[0].id)
    return {"deployment": str(deployment_id), "deleted": str(reports[0].id)}


async def delete(artifact_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.delete_artifact(UUID(artifact_id))
    return {"deleted": artifact_id}


def main() -> None:
    phase = sys.argv[1]
    if phase == "first":
        result = first()
    elif phase == "delete":
        result = asyncio.run(delete(sys.argv[2]))
    else:
        result = asyncio.run(second())
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

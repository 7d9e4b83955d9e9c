"""sync-prefect and `TRUNCATE` on a real PostgreSQL: a truncated table's entities are
published as deleted (the ids read back from the entity's topic), rows written after the
truncate in the same transaction stay, a `TRUNCATE ... CASCADE` empties the index of every
table it reaches, and a publication made without `truncate` is altered to publish it."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg

from services.config import KafkaSettings
from tests.sync.conftest import TopicLog
from tests.sync.test_cdc_bridge import bridge_running, converged, options, seed


async def test_truncate_publishes_deletes_for_what_the_topics_hold(
    prefect_db: str, sync_kafka: KafkaSettings, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(prefect_db)
    ids = await seed(conn)
    # a publication of an earlier bridge, without truncate: the bridge alters it
    await conn.execute(
        "CREATE PUBLICATION s_trunc FOR TABLE flow, deployment, flow_run, task_run, artifact "
        "WITH (publish = 'insert, update, delete')"
    )
    opts = options(tmp_path, "s_trunc")
    try:
        async with TopicLog(sync_kafka) as topics, bridge_running(sync_kafka, prefect_db, opts):
            assert await conn.fetchval(
                "SELECT pubtruncate FROM pg_publication WHERE pubname = 's_trunc'"
            )
            await converged(topics, prefect_db)
            streamed = str(uuid.uuid4())  # one artifact the stream (not the snapshot) sent
            await conn.execute(
                "INSERT INTO artifact (id, key, type, flow_run_id) VALUES ($1, 'late', 'link', $2)",
                streamed,
                ids["flow_run"],
            )
            await converged(topics, prefect_db)
            old = {ids["artifact0"], ids["artifact1"], ids["artifact2"], streamed}
            kept = str(uuid.uuid4())
            async with conn.transaction():
                # Prefect's states reference artifacts, runs reference states: the cascade
                # reaches flow_run and task_run too
                await conn.execute("TRUNCATE artifact CASCADE")
                await conn.execute(
                    "INSERT INTO artifact (id, key, type) VALUES ($1, 'kept', 'markdown')", kept
                )
            await converged(topics, prefect_db)
            latest = topics.latest()
            gone = {("artifact", i) for i in old}
            gone |= {("flow_run", ids["flow_run"]), ("task_run", ids["task_run"])}
            assert {k for k in gone if latest[k]["op"] == "delete"} == gone
            assert latest[("artifact", kept)]["op"] == "upsert"
            assert latest[("flow", ids["flow"])]["op"] == "upsert"
            truncated_at = latest[("artifact", kept)]["version"]
            assert {latest[k]["version"] for k in gone} == {truncated_at}
            # the flow and what references it (the deployment; no foreign key leads from an
            # artifact to a flow run: the kept artifact stays)
            await conn.execute("TRUNCATE flow CASCADE")
            await converged(topics, prefect_db)
            live = {k for k, event in topics.latest().items() if event["op"] == "upsert"}
            assert live == {("artifact", kept)}
            assert len(topics.latest()) == 9  # flow, deployment, 2 runs, 5 artifacts
            # later changes stream as before
            await conn.execute(
                "INSERT INTO flow (id, name, tags) VALUES ($1, 'after', '[]')", str(uuid.uuid4())
            )
            await converged(topics, prefect_db)
    finally:
        await conn.close()

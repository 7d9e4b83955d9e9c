"""sync-prefect against a real PostgreSQL (wal_level=logical) and Kafka, with rows written
by hand into tables Prefect's own migrations created: snapshot, streaming, TOASTed values,
restarts with and without SIGKILL, a dropped slot and the way back, a role without
REPLICATION."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.config import KafkaSettings
from services.sync.bridge import Bridge, SyncOptions
from services.sync.changes import VERSION_BASE
from services.sync.postgres import SyncSetupError
from tests.sync.conftest import TopicLog, clean_env, read_rows

REPO = Path(__file__).resolve().parents[2]


# ---- rows, by hand, in Prefect's tables ---------------------------------------------------


async def seed(conn: Any) -> dict[str, str]:
    """A flow, a deployment, a flow run, a task run and three artifacts (one large)."""
    ids = {k: str(uuid.uuid4()) for k in ("flow", "deployment", "flow_run", "task_run")}
    await conn.execute(
        "INSERT INTO flow (id, name, tags) VALUES ($1, 'etl', '[\"nightly\"]')", ids["flow"]
    )
    await conn.execute(
        "INSERT INTO deployment (id, name, flow_id, paused, tags) "
        "VALUES ($1, 'etl-prod', $2, false, '[]')",
        ids["deployment"],
        ids["flow"],
    )
    await conn.execute(
        "INSERT INTO flow_run (id, name, flow_id, deployment_id, state_type, state_name, "
        "tags, created_by) VALUES ($1, 'brave-fox', $2, $3, 'RUNNING', 'Running', '[\"x\"]', "
        '\'{"id": null, "type": "DEPLOYMENT", "display_value": "etl-prod"}\')',
        ids["flow_run"],
        ids["flow"],
        ids["deployment"],
    )
    await conn.execute(
        "INSERT INTO task_run (id, name, flow_run_id, task_key, dynamic_key, state_type, "
        "state_name) VALUES ($1, 'load-0', $2, 'load', '0', 'COMPLETED', 'Completed')",
        ids["task_run"],
        ids["flow_run"],
    )
    for n in range(3):
        aid = str(uuid.uuid4())
        ids[f"artifact{n}"] = aid
        # artifact2's data is large and incompressible: PostgreSQL stores it out of line
        data = (
            "to_json(md5(random()::text))"
            if n < 2
            else "to_json((SELECT string_agg(md5(random()::text), '') "
            "FROM generate_series(1, 400)))"
        )
        await conn.execute(
            "INSERT INTO artifact (id, key, type, data, metadata_, flow_run_id, task_run_id) "
            f"VALUES ($1, $2, 'markdown', {data}, '{{\"m\": \"1\"}}', $3, $4)",
            aid,
            "report" if n else None,
            ids["flow_run"],
            ids["task_run"],
        )
    return ids


async def database_state(dsn: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every row of the five tables as its contract `data`, by (table, id)."""
    return {(t, d["id"]): d for t, rows in (await read_rows(dsn)).items() for d in rows}


async def converged(topics: TopicLog, dsn: str, seconds: float = 30) -> None:
    """Kafka's latest event per entity is the database's row, or a delete when it is gone."""
    want = await database_state(dsn)

    def same() -> bool:
        latest = topics.latest()
        for key, data in want.items():
            event = latest.get(key)
            if event is None or event["op"] != "upsert" or event["data"] != data:
                return False
        return all(e["op"] == "delete" for k, e in latest.items() if k not in want)

    await topics.until(same, seconds, "Kafka did not converge on the database")
    topics.versions_never_go_back()


@contextlib.asynccontextmanager
async def bridge_running(
    kafka: KafkaSettings, dsn: str, options: SyncOptions
) -> AsyncIterator[Bridge]:
    stop = asyncio.Event()
    ready = asyncio.Event()
    bridge = Bridge(kafka, dsn, options, on_ready=lambda ok: ready.set() if ok else None)
    task = asyncio.create_task(bridge.run(stop))
    done, _ = await asyncio.wait(
        {task, asyncio.create_task(ready.wait())}, timeout=60, return_when=asyncio.FIRST_COMPLETED
    )
    if task in done:
        task.result()
    assert ready.is_set(), "the bridge did not start streaming"
    try:
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def options(tmp_path: Path, slot: str) -> SyncOptions:
    return SyncOptions(
        slot=slot, publication=slot, state_path=tmp_path / f"{slot}.json", status_interval_s=1.0
    )


# ---- in process ---------------------------------------------------------------------------


async def test_snapshot_then_changes_then_restart_converge(
    prefect_db: str, sync_kafka: KafkaSettings, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(prefect_db)
    ids = await seed(conn)
    opts = options(tmp_path, "s_inproc")
    async with TopicLog(sync_kafka) as topics:
        async with bridge_running(sync_kafka, prefect_db, opts):
            await converged(topics, prefect_db)
            snapshot_versions = {r["version"] for r in topics.records}
            assert len(snapshot_versions) == 1  # one snapshot, one consistent point
            assert min(snapshot_versions) > VERSION_BASE
            assert len(topics.records) == 7
            # a transaction touching several rows, one of them twice
            async with conn.transaction():
                await conn.execute(
                    "UPDATE flow_run SET state_type = 'FAILED', state_name = 'Failed' "
                    "WHERE id = $1",
                    ids["flow_run"],
                )
                await conn.execute(
                    "UPDATE flow_run SET state_name = 'Crashed', state_type = 'CRASHED' "
                    "WHERE id = $1",
                    ids["flow_run"],
                )
                await conn.execute("DELETE FROM artifact WHERE id = $1", ids["artifact0"])
                await conn.execute(
                    "UPDATE deployment SET paused = true, concurrency_limit = 3 WHERE id = $1",
                    ids["deployment"],
                )
            # the large value is left out of the stream (unchanged TOAST): read back
            await conn.execute(
                "UPDATE artifact SET description = 'refetched' WHERE id = $1", ids["artifact2"]
            )
            # created and deleted in one transaction: at most a harmless delete
            async with conn.transaction():
                ghost = str(uuid.uuid4())
                await conn.execute(
                    "INSERT INTO artifact (id, key, type) VALUES ($1, 'ghost', 'table')", ghost
                )
                await conn.execute("DELETE FROM artifact WHERE id = $1", ghost)
            await converged(topics, prefect_db)
            # the bridge's connections are cut, as a PostgreSQL restart would: it reconnects
            # and resumes from the slot
            cut = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                "WHERE application_name = 'artifact-search-sync' AND datname = current_database()"
            )
            assert cut >= 2  # the walsender and the SQL connection
            await conn.execute(
                'UPDATE flow SET tags = \'["nightly", "after-cut"]\' WHERE id = $1', ids["flow"]
            )
            await converged(topics, prefect_db)
            crashed = topics.latest()[("flow_run", ids["flow_run"])]
            assert crashed["data"]["state_type"] == "CRASHED"
            assert crashed["version"] > max(snapshot_versions)
            # the snapshot's and one for the transaction's two updates (the cut may re-send it)
            assert (
                len({r["version"] for r in topics.records if r["entity_id"] == ids["flow_run"]})
                == 2
            )
            big = topics.latest()[("artifact", ids["artifact2"])]["data"]
            assert big["description"] == "refetched" and len(big["data"]) == 12_800
        # stopped: changes meanwhile are kept by the slot
        count = len(topics.records)
        await conn.execute(
            "UPDATE task_run SET state_type = 'FAILED', state_name = 'Failed' WHERE id = $1",
            ids["task_run"],
        )
        new_artifact = str(uuid.uuid4())
        await conn.execute(
            "INSERT INTO artifact (id, key, type, data) VALUES ($1, 'later', 'link', "
            "'\"https://example.com\"')",
            new_artifact,
        )
        async with bridge_running(sync_kafka, prefect_db, opts):
            await converged(topics, prefect_db)
        # no second snapshot: only what changed was sent (re-sends of an unconfirmed tail at
        # most)
        assert len(topics.records) - count <= 4
    await conn.close()


async def test_a_role_without_replication_is_told_what_to_do(
    prefect_db: str, sync_kafka: KafkaSettings, tmp_path: Path
) -> None:
    role = f"noreplication_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(prefect_db)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        dsn = prefect_db.replace("postgres@", f"{role}@", 1)
        with pytest.raises(SyncSetupError, match=f'ALTER ROLE "{role}" WITH REPLICATION'):
            await Bridge(sync_kafka, dsn, options(tmp_path, "s_role")).run(asyncio.Event())
    finally:
        await conn.execute(f"DROP ROLE {role}")
        await conn.close()


# ---- the command, killed and restarted, its slot dropped ------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cli(
    kafka: KafkaSettings, dsn: str, state: Path, slot: str, port: int, *extra: str
) -> subprocess.Popen[bytes]:
    env = {
        **clean_env(),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "SYNC_POSTGRES_DSN": dsn,
        "LOG_FORMAT": "text",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "artifact_search.cli",
            "sync-prefect",
            "--slot",
            slot,
            "--publication",
            slot,
            "--state-file",
            str(state),
            "--metrics-port",
            str(port),
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def wait_ready(proc: subprocess.Popen[bytes], port: int, seconds: float = 60) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(int(seconds * 5)):
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"sync-prefect exited {proc.returncode}: {err.decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    pytest.fail("sync-prefect did not become ready")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


async def write_changes(dsn: str, flow_run: str, n: int) -> list[str]:
    """`n` small transactions: new artifacts, flow run updates, some deletes."""
    conn = await asyncpg.connect(dsn)
    made: list[str] = []
    try:
        for i in range(n):
            aid = str(uuid.uuid4())
            await conn.execute(
                "INSERT INTO artifact (id, key, type, data, flow_run_id) "
                "VALUES ($1, $2, 'progress', to_json($3::float), $4)",
                aid,
                f"k{i % 7}",
                float(i),
                flow_run,
            )
            made.append(aid)
            if i % 5 == 0:
                await conn.execute(
                    "UPDATE flow_run SET name = $2 WHERE id = $1", flow_run, f"run-{i}"
                )
            if i % 9 == 0:
                await conn.execute("DELETE FROM artifact WHERE id = $1", made[i // 2])
            if i % 20 == 0:
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return made


async def test_sigkill_mid_stream_then_restart_loses_nothing(
    prefect_db: str, sync_kafka: KafkaSettings, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(prefect_db)
    ids = await seed(conn)
    await conn.close()
    state, port = tmp_path / "state.json", free_port()
    # at most 5 events in flight: the stream is read under back-pressure
    proc = start_cli(sync_kafka, prefect_db, state, "s_kill", port, "--max-in-flight", "5")
    try:
        await wait_ready(proc, port)
        async with TopicLog(sync_kafka) as topics:
            writer = asyncio.create_task(write_changes(prefect_db, ids["flow_run"], 300))
            # killed once a third of the stream is in Kafka, while the writer goes on
            await topics.until(lambda: len(topics.records) >= 120, 60, "no progress")
            code, _ = stop(proc, signal.SIGKILL)
            assert code == -signal.SIGKILL
            await writer
            proc = start_cli(sync_kafka, prefect_db, state, "s_kill", port)
            await wait_ready(proc, port)
            await converged(topics, prefect_db, seconds=60)
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            assert "sync_prefect_lag_seconds" in metrics
            assert 'sync_prefect_events_total{entity="artifact",op="upsert",phase="stream"}' in (
                metrics
            )
    finally:
        code, err = stop(proc)
    assert code == 0, err[-2000:]


async def test_a_dropped_slot_stops_the_bridge_with_the_way_back(
    prefect_db: str, sync_kafka: KafkaSettings, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(prefect_db)
    ids = await seed(conn)
    state, port = tmp_path / "state.json", free_port()
    proc = start_cli(sync_kafka, prefect_db, state, "s_drop", port)
    try:
        await wait_ready(proc, port)
        pid = await conn.fetchval(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's_drop'"
        )
        await conn.execute("SELECT pg_terminate_backend($1, 5000)", pid)
        await conn.execute("SELECT pg_drop_replication_slot('s_drop')")
        code, err = await asyncio.to_thread(stop, proc, 0)  # signal 0: just wait for its exit
        assert code == 1, err[-2000:]
        assert "replication slot 's_drop' does not exist" in err
        assert "--recreate-slot" in err
        # the way back
        proc = start_cli(sync_kafka, prefect_db, state, "s_drop", port, "--recreate-slot")
        await wait_ready(proc, port)
        await conn.execute("DELETE FROM artifact WHERE id = $1", ids["artifact1"])
        async with TopicLog(sync_kafka) as topics:
            await converged(topics, prefect_db)
        assert stop(proc)[0] == 0
        # retiring the bridge: its slot and state file go
        retire = start_cli(sync_kafka, prefect_db, state, "s_drop", port, "--drop-slot")
        out, _ = retire.communicate(timeout=60)
        assert retire.returncode == 0 and b"slot s_drop dropped" in out
        assert not state.exists()
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's_drop'"
        )
    finally:
        stop(proc)
        await conn.close()

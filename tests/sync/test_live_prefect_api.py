"""The test that proves `sync-prefect --api-url`: Prefect's API only, Prefect's answers out.

A real Prefect 3.9.1 server runs with basic auth (`PREFECT_SERVER_API_AUTH_STRING`) on the
shared PostgreSQL; the bridge gets its API URL and auth string only — no database access
(the test reads the database for the body generator and the oracle's collections, as the
CDC test does). Kafka, the indexer and the query API run beside it. Real flows run with
Prefect's SDK (tests/sync/flows.py); the bridge is SIGKILLed after the first batch, the
second batch (a deployment, a paused one, an artifact deleted through Prefect's client)
runs while it is down, then it starts again from its checkpoint. A further artifact is
deleted while it runs: Prefect emits no event for that (it is not the latest of its key);
a full reconcile pass finds it, or a replayed creation event after a resubscription
(ADR 0009, "Which path finds a deletion").
Then the service answers the conformance suite's differential bodies exactly as Prefect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from datagen.dataset import compute_collections
from services.config import IndexerSettings, KafkaSettings
from tests.conformance.test_differential import Service
from tests.e2e.test_pipeline import running
from tests.sync.conftest import TopicLog, clean_env
from tests.sync.test_cdc_bridge import free_port, stop, wait_ready
from tests.sync.test_live_prefect import (
    REPO,
    PrefectHTTP,
    assert_same_answers,
    dataset_of,
    prefect_server,
    run_flows,
    wait_converged,
    wait_healthy,
)

AUTH = "admin:s3cret"
RECONCILE_S = 8
FULL_EVERY = 2  # every other pass lists everything (finds deletions); the others are incremental


def start_api_cli(
    kafka: KafkaSettings, api_url: str, auth: str, state: Path, port: int
) -> subprocess.Popen[bytes]:
    """`sync-prefect --api-url` as a user runs it (the secret in the environment)."""
    env = {
        **clean_env(),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "SYNC_API_AUTH_STRING": auth,
        "SYNC_RECONCILE_FULL_EVERY": str(FULL_EVERY),
        "LOG_FORMAT": "text",
    }
    argv = ["--api-url", api_url, "--state-file", str(state), "--metrics-port", str(port)]
    pacing = ["--reconcile-interval", str(RECONCILE_S), "--requests-per-second", "50"]
    return subprocess.Popen(
        [sys.executable, "-m", "artifact_search.cli", "sync-prefect", *argv, *pacing],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def refused(kafka: KafkaSettings, api_url: str, auth: str, tmp_path: Path) -> tuple[int, str]:
    """Run the bridge with settings that must be refused; its exit code and last line."""
    proc = start_api_cli(kafka, api_url, auth, tmp_path / "refused.sqlite", 0)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.decode().strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


async def metric(port: int, name: str) -> float:
    """The sum of a metric's samples on the bridge's /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def wait_for(check: object, seconds: float, what: str) -> None:
    """Poll an async predicate until it holds, or fail saying `what` did not happen."""
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what} within {seconds}s")
        await asyncio.sleep(0.5)


@pytest.mark.timeout(900)  # about 4 minutes on 2 cores, most of it Prefect's start and flows
async def test_api_mode_gives_prefects_answers(
    prefect_db: str, kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, tmp_path: Path
) -> None:
    home, port, metrics_port = tmp_path / "prefect-home", free_port(), free_port()
    home.mkdir()
    log = tmp_path / "prefect-server.log"
    api_url = f"http://127.0.0.1:{port}/api"
    state = tmp_path / "sync-api.sqlite"
    server_auth = {"PREFECT_SERVER_API_AUTH_STRING": AUTH}
    client_auth = {"PREFECT_API_AUTH_STRING": AUTH}
    basic = {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}
    settings = IndexerSettings(max_batch=500, metrics_port=0)
    with prefect_server(prefect_db, home, port, log, server_auth) as server:
        async with (
            running(kafka_bootstrap, elasticsearch_url, unique_name, settings) as (kafka, _, api),
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers=basic, timeout=30
            ) as prefect,
        ):
            await wait_healthy(prefect, server, log)

            # what a user with a wrong key or URL sees
            code, said = await asyncio.to_thread(refused, kafka, api_url, "admin:wrong", tmp_path)
            assert code == 1 and "answered 401" in said and "rejected" in said, said
            wrong_url = f"http://127.0.0.1:{port}/nope"
            code, said = await asyncio.to_thread(refused, kafka, wrong_url, AUTH, tmp_path)
            assert code == 1 and "is not a Prefect API" in said, said

            bridge = start_api_cli(kafka, api_url, AUTH, state, metrics_port)
            try:
                await wait_ready(bridge, metrics_port)
                first = await asyncio.to_thread(run_flows, "first", api_url, home, client_auth)
                assert first["failing"] == "FAILED"

                # Prefect's events, not only the reconcile passes, drive the bridge
                async def events_published() -> bool:
                    name = 'sync_prefect_events_total{entity="artifact",op="upsert",phase="event"}'
                    return await metric(metrics_port, name) > 0

                await wait_for(events_published, 30, "no artifact published from an event")
                assert await metric(metrics_port, "sync_prefect_api_events_received_total") > 0
                assert await metric(metrics_port, "sync_prefect_lag_seconds") >= 0

                # killed mid-stream: Prefect's task-run recorder is still writing
                code, _ = stop(bridge, signal.SIGKILL)
                assert code == -signal.SIGKILL
                second = await asyncio.to_thread(run_flows, "second", api_url, home, client_auth)
                bridge = start_api_cli(kafka, api_url, AUTH, state, metrics_port)
                await wait_ready(bridge, metrics_port)
                oracle, service = PrefectHTTP(prefect), Service(api)
                await wait_converged(oracle, service, prefect_db, 90)
                assert (await oracle.get(f"/artifacts/{second['deleted']}"))[0] == 404
                assert (await api.get(f"/api/artifacts/{second['deleted']}")).status_code == 404

                # deleted while the bridge runs: no Prefect event, a reconcile pass finds it
                dataset = await dataset_of(prefect_db)
                victim = next(a["id"] for a in dataset.artifacts if a["key"] == "extract-table")
                await asyncio.to_thread(run_flows, "delete", api_url, home, client_auth, victim)

                async def victim_gone() -> bool:
                    return (await api.get(f"/api/artifacts/{victim}")).status_code == 404

                # found by a full reconcile pass, or by a read that a replayed creation
                # event causes after a resubscription (clean-clone CI saw it deleted with
                # the pass counter at 0 twice; ADR 0009): either publishes the delete,
                # checked on the topic below
                await wait_for(victim_gone, 3 * RECONCILE_S + 30, "the deletion was not seen")
                await wait_converged(oracle, service, prefect_db, 60)

                dataset = await dataset_of(prefect_db)
                oracle.collections = {c["key"]: c for c in compute_collections(dataset.artifacts)}
                assert len(dataset.deployments) == 1 and dataset.deployments[0]["paused"]
                assert {r["state_type"] for r in dataset.flow_runs} >= {
                    "COMPLETED",
                    "FAILED",
                    "SCHEDULED",
                }
                assert {a["type"] for a in dataset.artifacts} >= {"markdown", "table", "progress"}
                assert any(r["parent_task_run_id"] for r in dataset.flow_runs)  # a subflow
                await assert_same_answers(oracle, service, api, dataset)

                # what went through Kafka: per entity, versions never go back (a re-sent
                # tail repeats a version already sent), and every entity Prefect holds
                # has its latest event an upsert, every deleted one a delete
                expected: dict[tuple[str, str], set[str | None]] = {
                    (entity, row["id"]): {"upsert"}
                    for entity, rows in (
                        ("flow", dataset.flows),
                        ("deployment", dataset.deployments),
                        ("flow_run", dataset.flow_runs),
                        ("task_run", dataset.task_runs),
                        ("artifact", dataset.artifacts),
                    )
                    for row in rows
                }
                expected[("artifact", victim)] = {"delete"}
                # created and deleted while the bridge was down: never published, or deleted
                expected[("artifact", second["deleted"])] = {None, "delete"}

                def wrong() -> list[tuple[tuple[str, str], str | None]]:
                    latest = topics.latest()
                    return [
                        (key, op)
                        for key, ops in expected.items()
                        if (op := latest.get(key, {}).get("op")) not in ops
                    ]

                async with TopicLog(kafka) as topics:  # opened once the topics have leaders
                    try:
                        await topics.until(lambda: not wrong(), 60, "the topics' state")
                    except pytest.fail.Exception:
                        pytest.fail(f"{len(wrong())}/{len(expected)} not as Prefect: {wrong()[:8]}")
                    topics.versions_never_go_back()
            finally:
                code, err = stop(bridge)
            assert code == 0, err[-2000:]
            # the restart resumed from the checkpoint: no second snapshot; full and
            # incremental passes alternated
            assert "snapshot pass" not in err and "reconcile pass:" in err, err[-2000:]
            assert "reconcile pass (incremental):" in err, err[-2000:]
    with contextlib.suppress(FileNotFoundError):
        state.unlink()

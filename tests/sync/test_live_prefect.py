"""The test that proves sync-prefect: real Prefect flows in, Prefect's own answers out.

A real Prefect 3.9.1 server (with its services: the task-run recorder writes task runs)
runs on a PostgreSQL with wal_level=logical; `sync-prefect` (the CLI, as a user runs it),
Kafka, the indexer and the query API run beside it. Real flows run with Prefect's SDK
(tests/sync/flows.py); the bridge is SIGKILLed between two batches of flows and started
again. Then, for the differential request bodies of the conformance suite, generated
from what the database holds, the service answers exactly as the same Prefect server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from datagen.dataset import Dataset, DatasetScale, compute_collections
from services.config import IndexerSettings
from tests.conformance.bodies import ENDPOINTS, coverage_size, generate_bodies
from tests.conformance.test_differential import Service, compare
from tests.e2e.test_pipeline import running
from tests.sync.conftest import clean_env, prefect_cli, prefect_env, read_rows
from tests.sync.test_cdc_bridge import free_port, start_cli, stop, wait_ready

REPO = Path(__file__).resolve().parents[2]
RANDOM_PER_ENDPOINT = 25

#: Prefect's services that would change the data while the answers are compared
QUIET_SERVICES = {
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",  # a clone of the migrated template
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
}


class PrefectHTTP:
    """The live Prefect server as the differential comparison's oracle.

    Prefect's artifact_collection rows keep a history the events do not carry: a random
    `id`, `created` reset to the next latest artifact's when the latest is deleted,
    `updated` bumped when the latest artifact is updated (models/artifacts.py). The
    service derives a collection from the live artifacts (contract rule 5: `id` uuid5 of
    the key, `created` the oldest artifact's, `updated` the latest's `created`). So the
    oracle's collections get those three fields as rule 5 computes them from the same
    database; every other field is compared as Prefect answers it, and orders on them
    (ID, CREATED, UPDATED) are compared as sets (see `compare_latest`).
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.collections: dict[str, dict[str, Any]] = {}

    def _rule5(self, row: dict[str, Any]) -> dict[str, Any]:
        derived = self.collections.get(row["key"])
        if derived is None:
            return row
        return {**row, **{f: derived[f] for f in ("id", "created", "updated")}}

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        resp = await self.client.post("/api" + path, json=body)
        answer = resp.json()
        if path == "/artifacts/latest/filter" and resp.status_code == 200:
            answer = [self._rule5(row) for row in answer]
        return resp.status_code, answer

    async def get(self, path: str) -> tuple[int, Any]:
        resp = await self.client.get("/api" + path)
        answer = resp.json()
        if path.endswith("/latest") and resp.status_code == 200:
            answer = self._rule5(answer)
        return resp.status_code, answer


async def compare_latest(oracle: PrefectHTTP, service: Service, body: dict[str, Any]) -> str | None:
    """`/artifacts/latest/filter`: exact under a key order, as sets under the others."""
    path = "/artifacts/latest/filter"
    if body.get("sort") in ("KEY_ASC", "KEY_DESC"):
        return await compare(oracle, service, path, body)  # type: ignore[arg-type]
    whole = {k: v for k, v in body.items() if k not in ("offset", "limit", "sort")}
    everything = {**whole, "sort": "KEY_ASC", "limit": 200}
    problem = await compare(oracle, service, path, everything)  # type: ignore[arg-type]
    if problem:
        return f"(as a set) {problem}"
    want_status, want = await oracle.post(path, body)
    got_status, got = await service.post(path, body)
    if want_status != got_status or (want_status == 200 and len(want) != len(got)):
        return f"status/length {got_status}/{len(got)} != {want_status}/{len(want)}"
    return None


@contextlib.contextmanager
def prefect_server(
    dsn: str, home: Path, port: int, log: Path, extra_env: dict[str, str] | None = None
) -> Any:
    env = {**prefect_env(dsn, str(home)), **QUIET_SERVICES, **(extra_env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_healthy(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Prefect server exited:\n{tail(log)}", pytrace=False)
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/api/health")).status_code == 200:
                return
        await asyncio.sleep(0.5)
    pytest.fail(f"the Prefect server did not answer in time:\n{tail(log)}")


def run_flows(
    phase: str, api_url: str, home: Path, extra_env: dict[str, str] | None = None, *args: str
) -> dict[str, Any]:
    env = {
        **clean_env(),
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_LOGGING_LEVEL": "ERROR",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(extra_env or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sync.flows", phase, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


async def dataset_of(dsn: str) -> Dataset:
    """What the Prefect database holds, as the body generator's dataset."""
    rows = await read_rows(dsn)
    return Dataset(
        seed=13,
        scale=DatasetScale.tiny(),
        flows=rows["flow"],
        deployments=rows["deployment"],
        flow_runs=rows["flow_run"],
        task_runs=rows["task_run"],
        artifacts=rows["artifact"],
    )


PROBES = [
    ("/artifacts/count", {}),
    ("/artifacts/count", {"flow_runs": {}}),
    ("/artifacts/count", {"task_runs": {}}),
    ("/artifacts/count", {"flows": {}}),
    ("/artifacts/count", {"deployments": {}}),
    ("/artifacts/count", {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}}),
    ("/artifacts/latest/count", {}),
    ("/artifacts/filter", {"sort": "ID_DESC"}),
    ("/artifacts/latest/filter", {"sort": "KEY_ASC"}),
]


async def wait_converged(oracle: PrefectHTTP, service: Service, dsn: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    problems: list[str] = []
    while time.monotonic() < deadline:
        dataset = await dataset_of(dsn)
        oracle.collections = {c["key"]: c for c in compute_collections(dataset.artifacts)}
        problems = [
            f"{path} {body}: {problem}"
            for path, body in PROBES
            if (problem := await compare(oracle, service, path, body))  # type: ignore[arg-type]
        ]
        if not problems:
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"the service did not catch up with Prefect in {seconds}s: {problems[:3]}")


async def assert_same_answers(
    oracle: PrefectHTTP, service: Service, api: httpx.AsyncClient, dataset: Dataset
) -> None:
    """The differential bodies of the conformance generator over `dataset`, and every
    artifact and key read by id: the service answers exactly as the Prefect server."""
    failures, total = [], 0
    for endpoint in ENDPOINTS:
        n = coverage_size(dataset, endpoint) + RANDOM_PER_ENDPOINT
        for body in generate_bodies(13, dataset, n, endpoint):
            total += 1
            if endpoint == "/artifacts/latest/filter":
                problem = await compare_latest(oracle, service, body)
            else:
                problem = await compare(oracle, service, endpoint, body)  # type: ignore[arg-type]
            if problem:
                failures.append((endpoint, body, problem))
    assert not failures, f"{len(failures)}/{total} disagreements: {failures[:3]}"
    for artifact in dataset.artifacts:
        want = await oracle.get(f"/artifacts/{artifact['id']}")
        got = await api.get(f"/api/artifacts/{artifact['id']}")
        assert (got.status_code, got.json()) == want
    for key in {a["key"] for a in dataset.artifacts if a["key"]}:
        want = await oracle.get(f"/artifacts/{key}/latest")
        got = await api.get(f"/api/artifacts/{key}/latest")
        assert (got.status_code, got.json()) == want


@pytest.mark.timeout(600)  # about 3 minutes on 2 cores, most of it Prefect's own start and flows
async def test_live_prefect_flows_give_prefects_answers(
    prefect_db: str, kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, tmp_path: Path
) -> None:
    home, port, metrics_port = tmp_path / "prefect-home", free_port(), free_port()
    home.mkdir()
    log = tmp_path / "prefect-server.log"
    api_url = f"http://127.0.0.1:{port}/api"
    state = tmp_path / "sync.state.json"
    settings = IndexerSettings(max_batch=500, metrics_port=0)
    with prefect_server(prefect_db, home, port, log) as server:
        async with (
            running(kafka_bootstrap, elasticsearch_url, unique_name, settings) as (kafka, _, api),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as prefect,
        ):
            bridge = start_cli(kafka, prefect_db, state, "s_live", metrics_port)
            try:
                await wait_healthy(prefect, server, log)
                await wait_ready(bridge, metrics_port)
                first = await asyncio.to_thread(run_flows, "first", api_url, home)
                assert first["failing"] == "FAILED"
                # killed mid-stream: Prefect's task-run recorder is still writing
                code, _ = stop(bridge, signal.SIGKILL)
                assert code == -signal.SIGKILL
                second = await asyncio.to_thread(run_flows, "second", api_url, home)
                bridge = start_cli(kafka, prefect_db, state, "s_live", metrics_port)
                await wait_ready(bridge, metrics_port)
                oracle, service = PrefectHTTP(prefect), Service(api)
                await wait_converged(oracle, service, prefect_db, 60)

                # the deleted artifact is gone from both
                assert (await oracle.get(f"/artifacts/{second['deleted']}"))[0] == 404
                assert (await api.get(f"/api/artifacts/{second['deleted']}")).status_code == 404
                dataset = await dataset_of(prefect_db)
                assert len(dataset.deployments) == 1 and dataset.deployments[0]["paused"]
                assert {r["state_type"] for r in dataset.flow_runs} >= {
                    "COMPLETED",
                    "FAILED",
                    "SCHEDULED",
                }
                assert {a["type"] for a in dataset.artifacts} >= {
                    "markdown",
                    "table",
                    "progress",
                }
                await assert_same_answers(oracle, service, api, dataset)
            finally:
                code, err = stop(bridge)
            assert code == 0, err[-2000:]

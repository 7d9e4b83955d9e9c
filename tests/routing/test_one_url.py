"""One URL for Prefect users: nginx in front of the real Prefect server and this service.

Everything is a real process: Prefect 3.9.1 (`prefect server start`, its services and
UI) on a PostgreSQL database of its own; this project's `api` and `indexer` on the
shared Kafka and Elasticsearch (names unique to the test); Debian's nginx serving
deploy/proxy/one-url.conf.template, rendered for the test's ports. Prefect's client and
CLI see only the proxy (``PREFECT_API_URL=http://<proxy>/api``):

1. a flow run with a task, through the proxy: flows, runs, states, the task's events over
   the websocket and the artifact writes all reach Prefect;
2. before the artifacts are indexed, reads through the proxy find nothing while Prefect
   has them: the answer came from this service, not from Prefect;
3. `backfill-prefect` publishes Prefect's database to Kafka and the indexer indexes it;
   then every artifact read through the proxy equals Prefect's own answer, byte for byte;
4. Prefect's client (`read_artifacts`, `read_latest_artifacts`, `read_flow_run`, ...) and
   CLI (`prefect artifact ls`, `artifact inspect`, `flow-run ls`) work through the proxy,
   and its access log shows which upstream served each call;
5. an artifact write through the one URL (DELETE) still goes to Prefect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import Elasticsearch

from tests.routing.processes import (
    REPO,
    Nginx,
    PrefectServer,
    Process,
    clean_env,
    free_port,
    wait_for_http,
)

UPSTREAM = "X-One-URL-Upstream"
SEARCH, PREFECT = "artifact_search", "prefect_server"

pytestmark = pytest.mark.timeout(900)


def _run(args: list[str], env: dict[str, str], timeout: float = 240) -> str:
    proc = subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _routes(lines: list[str]) -> list[tuple[str, str, str]]:
    """(method, path, upstream) of access log lines: ... "GET /p HTTP/1.1" 200 12 upstream ..."""
    out = []
    for line in lines:
        request = line.split('"')[1].split()
        fields = line.split('"')[2].split()
        out.append((request[0], request[1].split("?")[0], fields[2]))
    return out


def _without_ids(collections: Any) -> Any:
    """Collection rows without their `id`: the index names a key's collection
    uuid5(namespace, key) (docs/document-model.md) where Prefect's `artifact_collection`
    table has a random id; `latest_id` and every other field must agree."""
    if isinstance(collections, list):
        return [_without_ids(c) for c in collections]
    return {k: v for k, v in collections.items() if k != "id"}


def _wait(
    check: Callable[[], Any], what: str, timeout: float = 180, why: Callable[[], Any] = str
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s {why()}")
        time.sleep(0.5)


@contextlib.contextmanager
def _database(postgres_dsn: str, name: str) -> Iterator[str]:
    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(
        admin(
            f'CREATE DATABASE "{name}" TEMPLATE template0 '
            "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    )
    base, _, _ = postgres_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _drop_names(kafka: str, es_url: str, prefix: str) -> None:
    async def topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    asyncio.run(topics())
    es = Elasticsearch(es_url)
    try:
        found = es.indices.get(index=f"{prefix}*", allow_no_indices=True).body
        if found:
            es.indices.delete(index=",".join(found))
    finally:
        es.close()


def test_prefect_client_and_cli_through_one_url(
    kafka_bootstrap: str,
    elasticsearch_url: str,
    postgres_dsn: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    key = f"one-url-{uuid.uuid4().hex[:8]}"
    service_env = clean_env(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_TOPIC_PREFIX=f"{unique_name}.",
        KAFKA_GROUP_ID=unique_name,
        KAFKA_PARTITIONS="1",
        ELASTICSEARCH_URL=elasticsearch_url,
        ELASTICSEARCH_INDEX_PREFIX=f"{unique_name}-",
        INDEXER_STATE_DIR=str(tmp_path / "indexer-state"),
        INDEXER_METRICS_PORT="0",
        LOG_LEVEL="WARNING",
    )
    cli = [sys.executable, "-m", "artifact_search.cli"]
    search_port = free_port()
    try:
        with contextlib.ExitStack() as stack:
            database = stack.enter_context(_database(postgres_dsn, unique_name.replace("-", "_")))
            _run([*cli, "bootstrap"], service_env)
            api = Process(
                "api",
                [*cli, "api", "--host", "127.0.0.1", "--port", str(search_port)],
                service_env,
                tmp_path / "api.log",
            )
            indexer = Process("indexer", [*cli, "indexer"], service_env, tmp_path / "indexer.log")
            stack.callback(api.stop)
            stack.callback(indexer.stop)
            wait_for_http(f"http://127.0.0.1:{search_port}/api/ready", api.start(), "the API", 120)
            indexer.start()
            prefect = stack.enter_context(
                PrefectServer(
                    database.replace("postgresql://", "postgresql+asyncpg://", 1),
                    tmp_path / "prefect-server-home",
                    tmp_path / "prefect-server.log",
                )
            )
            proxy = stack.enter_context(Nginx(tmp_path / "nginx", prefect.port, search_port))
            http = stack.enter_context(httpx.Client(base_url=proxy.url, timeout=30))
            direct = stack.enter_context(httpx.Client(base_url=prefect.url, timeout=30))
            _walk_through(
                proxy,
                http,
                direct,
                key,
                database,
                [*cli, "backfill-prefect"],
                service_env,
                tmp_path,
            )
            assert indexer.proc is not None and indexer.proc.poll() is None, indexer.tail()
    finally:
        _drop_names(kafka_bootstrap, elasticsearch_url, unique_name)


def _walk_through(
    proxy: Nginx,
    http: httpx.Client,
    direct: httpx.Client,
    key: str,
    database: str,
    backfill: list[str],
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    user_env = clean_env(
        PREFECT_HOME=str(tmp_path / "prefect-user-home"),
        PREFECT_API_URL=f"{proxy.url}/api",
        PREFECT_LOGGING_LEVEL="WARNING",
        COLUMNS="300",
    )
    user = [sys.executable, "-m", "tests.routing.prefect_user"]

    # 1. a flow run through the proxy: everything it writes reaches Prefect
    seen = len(proxy.access_lines())
    ran = json.loads(_run([*user, "run", key], user_env))
    assert ran["state"] == "COMPLETED" and ran["result"] == 49, ran
    assert ran["task_run_ids"], "the task run's events did not reach Prefect through the proxy"
    routes = _routes(proxy.access_lines()[seen:])
    assert ("POST", "/api/flow_runs/", PREFECT) in routes
    assert ("POST", "/api/artifacts/", PREFECT) in routes  # artifact writes stay with Prefect
    assert ("GET", "/api/events/in", PREFECT) in routes  # the websocket
    assert {upstream for _, _, upstream in routes} == {PREFECT}, routes
    flow_run_id = ran["flow_run_id"]

    # 2. not indexed yet: the proxy's artifact reads are answered here, not by Prefect
    body = {"artifacts": {"key": {"like_": key}}, "sort": "KEY_ASC"}
    theirs = direct.post("/api/artifacts/filter", json=body)
    assert theirs.status_code == 200 and len(theirs.json()) == 2, theirs.text
    ours = http.post("/api/artifacts/filter", json=body)
    assert (ours.status_code, ours.json(), ours.headers[UPSTREAM]) == (200, [], SEARCH)

    # 3. Prefect's database -> Kafka -> indexer -> Elasticsearch; then the same answers
    backfill_env = {
        **service_env,
        "BACKFILL_POSTGRES_DSN": database.replace("postgresql://", "postgresql+asyncpg://", 1),
    }
    _run([*backfill, "--checkpoint", str(tmp_path / "backfill.json")], backfill_env)
    collection_body = {"artifacts": {"key": {"like_": key}}, "sort": "KEY_ASC"}
    requests = [
        ("/api/artifacts/filter", body),
        ("/api/artifacts/count", body),
        ("/api/artifacts/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}),
        ("/api/artifacts/latest/filter", collection_body),
        ("/api/artifacts/latest/count", collection_body),
    ]

    def disagreements() -> list[str]:
        # the artifacts, their runs' joins and the collections live in separate
        # indices that refresh on their own: the answers converge, not at once
        wrong = []
        for path, request in requests:
            ours, theirs = http.post(path, json=request), direct.post(path, json=request)
            assert ours.headers[UPSTREAM] == SEARCH, path
            if path == "/api/artifacts/latest/filter":
                same = _without_ids(ours.json()) == _without_ids(theirs.json())
            else:
                same = (ours.status_code, ours.content) == (theirs.status_code, theirs.content)
            if not same:
                wrong.append(f"{path} {request}: ours {ours.text} theirs {theirs.text}")
        return wrong

    last: list[str] = []

    def agree() -> bool:
        last[:] = disagreements()
        return not last

    _wait(agree, "the backfilled artifacts' answers", why=lambda: last)
    artifact = direct.post("/api/artifacts/filter", json=body).json()[0]
    assert artifact["key"] == key
    ours, theirs = (
        http.get(f"/api/artifacts/{artifact['id']}"),
        direct.get(f"/api/artifacts/{artifact['id']}"),
    )
    assert ours.headers[UPSTREAM] == SEARCH
    assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content)
    ours, theirs = (
        http.get(f"/api/artifacts/{key}/latest"),
        direct.get(f"/api/artifacts/{key}/latest"),
    )
    assert ours.headers[UPSTREAM] == SEARCH and ours.status_code == theirs.status_code == 200
    assert _without_ids(ours.json()) == _without_ids(theirs.json())
    search = {"q": "square", "prefect_filter": {"artifacts": {"key": {"any_": [key]}}}}
    found = http.post("/ext/v1/artifacts/search", json=search)
    assert found.headers[UPSTREAM] == SEARCH and found.status_code == 200, found.text
    assert [hit["artifact"]["id"] for hit in found.json()["hits"]] == [artifact["id"]]
    # everything else is Prefect's: runs, the UI
    run_page = http.get(f"/api/flow_runs/{flow_run_id}")
    assert (run_page.status_code, run_page.headers[UPSTREAM]) == (200, PREFECT)
    ui = http.get("/")
    assert ui.status_code == 200 and ui.headers[UPSTREAM] == PREFECT
    assert "text/html" in ui.headers["content-type"]

    # 4. Prefect's client through the proxy
    seen = len(proxy.access_lines())
    read = json.loads(_run([*user, "read", key, flow_run_id], user_env))
    assert [a["key"] for a in read["artifacts"]] == [key, f"{key}-table"]
    assert {a["id"] for a in read["artifacts"]} == {
        a["id"] for a in direct.post("/api/artifacts/filter", json=body).json()
    }
    assert [a["key"] for a in read["latest"]] == [key, f"{key}-table"]
    assert read["flow_run"]["id"] == flow_run_id and read["flow"]["name"] == "report"
    assert [t["id"] for t in read["task_runs"]] == ran["task_run_ids"]
    routes = _routes(proxy.access_lines()[seen:])
    assert ("POST", "/api/artifacts/filter", SEARCH) in routes
    assert ("POST", "/api/artifacts/latest/filter", SEARCH) in routes
    assert ("GET", f"/api/flow_runs/{flow_run_id}", PREFECT) in routes
    assert ("POST", "/api/task_runs/filter", PREFECT) in routes

    # ... and Prefect's CLI
    prefect_cli = [sys.executable, "-m", "prefect"]
    seen = len(proxy.access_lines())
    assert key in _run([*prefect_cli, "artifact", "ls"], user_env)
    assert ("POST", "/api/artifacts/latest/filter", SEARCH) in _routes(proxy.access_lines()[seen:])
    seen = len(proxy.access_lines())
    assert "square of 7: 49" in _run([*prefect_cli, "artifact", "inspect", key], user_env)
    assert ("POST", "/api/artifacts/filter", SEARCH) in _routes(proxy.access_lines()[seen:])
    seen = len(proxy.access_lines())
    assert f"run-{key}" in _run([*prefect_cli, "flow-run", "ls"], user_env)
    assert ("POST", "/api/flow_runs/filter", PREFECT) in _routes(proxy.access_lines()[seen:])

    # 5. a write through the one URL goes to Prefect
    deleted = http.delete(f"/api/artifacts/{artifact['id']}")
    assert (deleted.status_code, deleted.headers[UPSTREAM]) == (204, PREFECT)
    assert direct.get(f"/api/artifacts/{artifact['id']}").status_code == 404

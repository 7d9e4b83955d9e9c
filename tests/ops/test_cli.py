"""`artifact-search` end to end on the real local servers: help, bootstrap, produce, replay,
backfill-prefect (against Prefect 3.9.1's own database, answers compared with the oracle)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from elasticsearch import AsyncElasticsearch

from artifact_search.cli import cli_source
from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import HARD, dataset_records, records_jsonl
from indexer.app import Indexer
from indexer.replay import replay
from query.app import create_app
from services.backfill import RateLimiter
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings, QuerySettings
from services.es.indices import SCHEMA_VERSION as V
from tests.conformance.bodies import ENDPOINTS, generate_bodies
from tests.conformance.oracle import PrefectOracle
from tests.conformance.test_differential import Service, compare
from tests.ops.cleanup import drop_test_names

REPO = Path(__file__).resolve().parents[2]
ENV_PREFIXES = ("KAFKA_", "ELASTICSEARCH_", "INDEXER_", "QUERY_", "BACKFILL_", "LOG_")


@dataclass
class Stack:
    """One test's isolated names on the shared servers."""

    name: str
    kafka: KafkaSettings
    es: ElasticsearchSettings
    env: dict[str, str]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "artifact_search.cli",
            *args,
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 240)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def ok(self, *args: str) -> str:
        code, out, err = await self.cli(*args)
        assert code == 0, f"{args} exited {code}:\n{out}\n{err[-3000:]}"
        return out

    def client(self) -> httpx.AsyncClient:
        app = create_app(QuerySettings(), self.es)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


@pytest.fixture
async def stack(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"{unique_name}.", group_id=unique_name
    )
    es = ElasticsearchSettings(url=elasticsearch_url, index_prefix=f"{unique_name}-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_TOPIC_PREFIX=kafka.topic_prefix,
        KAFKA_GROUP_ID=unique_name,
        ELASTICSEARCH_URL=elasticsearch_url,
        ELASTICSEARCH_INDEX_PREFIX=es.index_prefix,
        INDEXER_METRICS_PORT="0",
        INDEXER_STATE_DIR=str(tmp_path / "indexer-state"),
        LOG_LEVEL="WARNING",
    )
    try:
        yield Stack(unique_name, kafka, es, env)
    finally:
        await drop_test_names(kafka_bootstrap, elasticsearch_url, unique_name)


async def _aliases(es_settings: ElasticsearchSettings) -> dict[str, list[str]]:
    client = AsyncElasticsearch(es_settings.url)
    try:
        resp = await client.indices.get_alias(index=f"{es_settings.index_prefix}*")
        out: dict[str, list[str]] = {}
        for index, body in resp.body.items():
            for alias in body["aliases"]:
                out.setdefault(alias, []).append(index)
        return {k: sorted(v) for k, v in out.items()}
    finally:
        await client.close()


async def _indices(es_settings: ElasticsearchSettings) -> list[str]:
    client = AsyncElasticsearch(es_settings.url)
    try:
        resp = await client.indices.get(index=f"{es_settings.index_prefix}*")
        return sorted(resp.body)
    finally:
        await client.close()


# --- help ------------------------------------------------------------------------------------


def _subparsers() -> dict[str, Any]:
    parser = cli_source().root_parser
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)  # type: ignore[arg-type]


def test_every_help_exits_0_and_mentions_every_option() -> None:
    import subprocess

    commands = _subparsers()
    assert {"api", "indexer", "bootstrap", "produce", "replay", "backfill-prefect"} <= set(commands)
    assert "demo" not in commands  # generated data is a development tool: python -m datagen
    top = subprocess.run(
        [sys.executable, "-m", "artifact_search.cli", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert top.returncode == 0
    for name in commands:
        assert name in top.stdout
    for name, sub in commands.items():
        proc = subprocess.run(
            [sys.executable, "-m", "artifact_search.cli", name, "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        for action in sub._actions:
            for option in action.option_strings:
                assert option in proc.stdout, f"{name} --help does not mention {option}"
            if not action.option_strings:
                assert str(action.metavar or action.dest) in proc.stdout
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    backfill_help = " ".join(
        subprocess.run(
            [sys.executable, "-m", "artifact_search.cli", "backfill-prefect", "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
    )
    assert "REST API is not supported" in backfill_help


def test_installed_entry_point() -> None:
    import shutil
    import subprocess

    exe = Path(sys.executable).with_name("artifact-search")
    path = str(exe) if exe.exists() else shutil.which("artifact-search")
    assert path, "the artifact-search entry point is not installed (pip install -e .)"
    proc = subprocess.run([path, "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "replay" in proc.stdout


# --- bootstrap, produce, replay ---------------------------------------------------------------


async def test_bootstrap_twice_is_a_no_op_the_second_time(stack: Stack) -> None:
    first = await stack.ok("bootstrap")
    assert "topics: 6 created, 0 already present" in first
    assert "indices: 5 created, 0 already present" in first
    aliases = await _aliases(stack.es)
    indices = await _indices(stack.es)
    second = await stack.ok("bootstrap")
    assert "topics: 0 created, 6 already present" in second
    assert "indices: 0 created, 5 already present" in second
    assert await _aliases(stack.es) == aliases
    assert await _indices(stack.es) == indices
    assert set(aliases) == {f"{stack.es.index_prefix}{k}" for k in (*ENTITY_KINDS, *ALERTING)}


ENTITY_KINDS = ("artifacts", "collections", "control")
ALERTING = ("saved-searches", "alert-ledger")  # user data: replay leaves them alone


async def _wait_count(client: httpx.AsyncClient, path: str, want: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    got = -1
    while time.monotonic() < deadline:
        resp = await client.post(path, json={})
        if resp.status_code == 200:
            got = resp.json()
            if got == want:
                return got
        await asyncio.sleep(0.5)
    return got


async def test_produce_then_replay_swaps_aliases_without_changing_answers(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.ok("bootstrap")
    dataset = generate_dataset(3, DatasetScale.tiny())
    records = dataset_records(dataset, 3, HARD)
    poison = {
        "event_id": "0b8f1c9e-3f57-4f1e-9a53-2c1d7e0f6a11",
        "op": "upsert",
        "entity": "artifact",
        "entity_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
        "version": 1,
        "occurred": "2024-01-01T00:00:00Z",
        "data": {"id": "3c90c3cc-0d44-4b50-8888-8dd25736052a"},  # no created/updated
    }
    path = tmp_path / "events.jsonl"
    path.write_text(records_jsonl(records) + json.dumps(poison) + "\n")
    out = await stack.ok("produce", str(path))
    assert f"published {len(records) + 1} events" in out

    # the live index, built by the real indexer
    indexer = Indexer(stack.kafka, stack.es, IndexerSettings(max_batch=200))
    await indexer.start()
    async with stack.client() as client:
        try:
            want = len(dataset.artifacts)
            assert await _wait_count(client, "/api/artifacts/count", want, 90) == want
            keys = {a["key"] for a in dataset.artifacts if a["key"] is not None}
            assert await _wait_count(client, "/api/artifacts/latest/count", len(keys), 30) == len(
                keys
            )
        finally:
            await indexer.stop()
        bodies = [
            (endpoint, body)
            for endpoint in ENDPOINTS
            for body in generate_bodies(3, dataset, 8, endpoint)
        ]
        before = [(await client.post("/api" + e, json=b)).json() for e, b in bodies]
        assert (await _aliases(stack.es))[f"{stack.es.index_prefix}artifacts"] == [
            f"{stack.es.index_prefix}artifacts-v{V}"
        ]

        # readers keep getting the same count all through the replay and the swap
        seen: list[Any] = []
        stop = asyncio.Event()

        async def reader() -> None:
            while not stop.is_set():
                resp = await client.post("/api/artifacts/count", json={})
                seen.append(resp.json() if resp.status_code == 200 else resp.status_code)
                await asyncio.sleep(0.02)

        task = asyncio.create_task(reader())
        try:
            code, out, err = await stack.cli("replay", "--batch-size", "50")
        finally:
            stop.set()
            await task
        assert code == 0, err[-3000:]
        assert "1 poison skipped" in out and f"into version {V + 1}" in out
        assert f"replay v{V + 1} [" in err and "100.0%" in err  # the progress bar
        assert seen and all(v == want for v in seen), sorted(set(map(str, seen)))

        aliases = await _aliases(stack.es)
        assert {a: i for a, i in aliases.items() if _derived(stack, a)} == {
            f"{stack.es.index_prefix}{k}": [f"{stack.es.index_prefix}{k}-v{V + 1}"]
            for k in ENTITY_KINDS
        }
        derived = [i for i in await _indices(stack.es) if _derived(stack, i)]
        assert not any(i.endswith(f"-v{V}") for i in derived)  # old ones deleted
        after = [(await client.post("/api" + e, json=b)).json() for e, b in bodies]
        assert after == before

        # --keep-old keeps the replayed version next to the next one
        await stack.ok("replay", "--keep-old")
        indices = [i for i in await _indices(stack.es) if _derived(stack, i)]
        assert {i.rsplit("-v", 1)[1] for i in indices} == {str(V + 1), str(V + 2)}
        assert (await _aliases(stack.es))[f"{stack.es.index_prefix}artifacts"] == [
            f"{stack.es.index_prefix}artifacts-v{V + 2}"
        ]
        assert [(await client.post("/api" + e, json=b)).json() for e, b in bodies] == before


def _derived(stack: Stack, name: str) -> bool:
    """Whether an alias or index is one replay rebuilds (not an alerting one)."""
    return not any(name.startswith(f"{stack.es.index_prefix}{k}") for k in ALERTING)


async def test_replay_fails_cleanly_without_topics(stack: Stack) -> None:
    code, _, err = await stack.cli("replay")
    assert code != 0
    assert "bootstrap" in err
    assert await _indices_or_empty(stack.es) == []


async def _indices_or_empty(es_settings: ElasticsearchSettings) -> list[str]:
    client = AsyncElasticsearch(es_settings.url)
    try:
        resp = await client.indices.get(index=f"{es_settings.index_prefix}*", allow_no_indices=True)
        return sorted(resp.body)
    finally:
        await client.close()


# --- backfill-prefect ------------------------------------------------------------------------


async def test_rate_limiter_paces_events() -> None:
    limiter = RateLimiter(500)
    started = time.monotonic()
    for _ in range(750):
        await limiter.take()
    # one second of burst (500), then 250 more at 500/s
    assert time.monotonic() - started >= 0.45


async def test_backfill_from_prefect_database_gives_prefects_answers(
    stack: Stack, postgres_dsn: str, tmp_path: Path
) -> None:
    seed = 17
    dataset = generate_dataset(seed, DatasetScale.tiny())
    await stack.ok("bootstrap")
    checkpoint = tmp_path / "backfill.json"
    async with PrefectOracle(postgres_dsn, dataset) as oracle:
        dsn = oracle.database_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        stack.env["BACKFILL_POSTGRES_DSN"] = dsn
        code, out, err = await stack.cli(
            "backfill-prefect", "--checkpoint", str(checkpoint), "--chunk-size", "7"
        )
        assert code == 0, err[-3000:]
        total = sum(
            len(dataset.entities(e)) for e in ("flow", "deployment", "flow_run", "task_run")
        ) + len(dataset.artifacts)
        assert f"published {total} events" in out and "complete" in out
        assert "backfill [" in err
        saved = json.loads(checkpoint.read_text())
        assert saved["complete"] is True and saved["published"] == total

        # a second run has nothing to do
        assert "published 0 events" in await stack.ok(
            "backfill-prefect", "--checkpoint", str(checkpoint)
        )
        # resume from the middle of the artifact table: only the rows after it go out
        ids = sorted(a["id"] for a in dataset.artifacts)
        middle = ids[len(ids) // 2]
        checkpoint.write_text(
            json.dumps({"table": "artifact", "last_id": middle, "published": 0, "complete": False})
        )
        out = await stack.ok(
            "backfill-prefect", "--checkpoint", str(checkpoint), "--max-events-per-second", "1000"
        )
        rest = sum(1 for i in ids if i > middle)
        assert f"resumed after artifact {middle}" in out
        assert f"published {rest} events (artifact {rest})" in out

        # index the topics with the indexer's engine and compare answers with Prefect's
        result = await replay(stack.kafka, stack.es, IndexerSettings(max_batch=300))
        assert result.records == total + rest and not result.poison
        async with stack.client() as client:
            service = Service(client)
            problems = []
            checked = 0
            for endpoint in ENDPOINTS:
                for body in generate_bodies(seed, dataset, 10, endpoint):
                    checked += 1
                    problem = await compare(oracle, service, endpoint, body)
                    if problem:
                        problems.append((endpoint, body, problem))
            assert checked >= 40
            assert not problems, f"{len(problems)}/{checked} disagreements: {problems[:3]}"
            for art in dataset.artifacts[:10]:
                want = await oracle.get(f"/artifacts/{art['id']}")
                got = await client.get(f"/api/artifacts/{art['id']}")
                assert (got.status_code, got.json()) == want
            # the service's JSON equals Prefect's for every artifact
            status, rows = await oracle.post("/artifacts/filter", {"limit": 200})
            mine = await client.post("/api/artifacts/filter", json={"limit": 200})
            assert status == 200 and orjson.dumps(
                sorted(rows, key=lambda r: r["id"])
            ) == orjson.dumps(sorted(mine.json(), key=lambda r: r["id"]))


# --- the indexer's metrics and health endpoints ----------------------------------------------


async def test_indexer_serves_metrics_liveness_and_readiness(stack: Stack) -> None:
    import signal
    import socket

    await stack.ok("bootstrap")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **stack.env,
        "INDEXER_METRICS_PORT": str(port),
        "INDEXER_METRICS_HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",  # FastStream logs its start at INFO
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "artifact_search.cli",
        "indexer",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 60
            ready = None
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    ready = (await http.get("/readyz")).status_code
                    if ready == 200:
                        break
                await asyncio.sleep(0.3)
            assert ready == 200
            assert (await http.get("/livez")).status_code == 200
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert "indexer_batch_seconds" in metrics.text
            assert (await http.get("/nope")).status_code == 404
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [line for line in err.decode().splitlines() if line.strip()]
    loggers = set()
    for line in lines:  # every line JSON, FastStream's own included (no coloured text)
        record = orjson.loads(line)
        assert "correlation_id" in record, line
        loggers.add(record["logger"])
    assert "indexer.faststream" in loggers, loggers

"""Machinery of the fault suite: private servers, indexer processes, the independent oracle.

Everything here talks to the PRIVATE servers of the fault suite only (their own runtime
directory under ``.local/faults`` and their own ports, see ``PrivateServers``): the
scenarios stop and restart servers, which must never happen to the shared ones.

The expected state of every scenario comes from the generated dataset itself, never
from the indexer's code: the live artifacts and their JSON, the collections that
``Dataset.collections()`` derives, a handful of join-filter counts computed in Python,
and the version each entity must end at (the greatest version the stream sent for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from elasticsearch import AsyncElasticsearch

from datagen.dataset import Dataset, DatasetScale, generate_dataset
from datagen.events import HARD, dataset_records
from query.app import create_app
from services.config import ElasticsearchSettings, KafkaSettings, QuerySettings
from services.contract import ENTITIES
from services.documents import collection_id
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVERS_SH = REPO_ROOT / "deploy" / "local" / "servers.sh"
#: Beside the shared servers' state: inside SERVERS_LOCAL_DIR when it is set (CI moves it out
#: of a repository other users cannot traverse, which Elasticsearch's user must), else .local/.
FAULTS_DIR = (
    Path(os.environ["SERVERS_LOCAL_DIR"]) / "faults"
    if os.environ.get("SERVERS_LOCAL_DIR")
    else REPO_ROOT / ".local" / "faults"
)
LOG_DIR = FAULTS_DIR / "logs"

#: Ports of the shared servers other people test against: never ours.
SHARED_PORTS = frozenset({9092, 9093, 9200, 9300, 55432})
#: Environment prefixes that must not leak into an indexer process from the test's env.
_SETTINGS_PREFIXES = ("KAFKA_", "ELASTICSEARCH_", "INDEXER_", "QUERY_")

Record = tuple[str, bytes, bytes | None]
TARGETS = ("kafka", "es")
CONVERGE_S = 150.0


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


# --------------------------------------------------------------------------------------------
# private servers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivateServers:
    """Kafka and Elasticsearch of the fault suite, run by deploy/local/servers.sh."""

    local_dir: Path = FAULTS_DIR
    kafka_port: int = field(default_factory=lambda: _port("FAULTS_KAFKA_PORT", 19092))
    controller_port: int = field(
        default_factory=lambda: _port("FAULTS_KAFKA_CONTROLLER_PORT", 19093)
    )
    es_port: int = field(default_factory=lambda: _port("FAULTS_ES_PORT", 19200))
    es_transport_port: int = field(default_factory=lambda: _port("FAULTS_ES_TRANSPORT_PORT", 19300))

    def __post_init__(self) -> None:
        ports = {self.kafka_port, self.controller_port, self.es_port, self.es_transport_port}
        if len(ports) != 4 or ports & SHARED_PORTS:
            raise ValueError(f"fault-suite ports {sorted(ports)} collide with shared servers")
        if self.local_dir.resolve() == (REPO_ROOT / ".local").resolve():
            raise ValueError("the fault suite needs its own SERVERS_LOCAL_DIR")

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def es_url(self) -> str:
        return f"http://127.0.0.1:{self.es_port}"

    def env(self) -> dict[str, str]:
        """Environment of servers.sh: the private directory and ports, modest heaps."""
        env = dict(os.environ)
        env.update(
            SERVERS_LOCAL_DIR=str(self.local_dir),
            KAFKA_PORT=str(self.kafka_port),
            KAFKA_CONTROLLER_PORT=str(self.controller_port),
            ES_PORT=str(self.es_port),
            ES_TRANSPORT_PORT=str(self.es_transport_port),
            ES_HEAP=os.environ.get("FAULTS_ES_HEAP", "512m"),
            KAFKA_HEAP=os.environ.get("FAULTS_KAFKA_HEAP", "384m"),
        )
        return env

    def _popen(self, command: str, target: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", str(SERVERS_SH), command, target],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, command: str, *targets: str, timeout: float = 240) -> float:
        """Run `servers.sh COMMAND TARGET` for each target concurrently; seconds taken."""
        start = time.monotonic()
        procs = [(t, self._popen(command, t)) for t in targets]
        failures = []
        for target, proc in procs:
            try:
                out, _ = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                failures.append(f"{command} {target}: timed out\n{out}")
                continue
            if proc.returncode != 0:
                failures.append(f"{command} {target}: exit {proc.returncode}\n{out}")
        if failures:
            raise RuntimeError("servers.sh failed:\n" + "\n".join(failures))
        return time.monotonic() - start

    def running(self, target: str) -> bool:
        proc = subprocess.run(
            ["bash", str(SERVERS_SH), "status", target],
            env=self.env(),
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0


# --------------------------------------------------------------------------------------------
# indexer processes
# --------------------------------------------------------------------------------------------
@dataclass
class Wiring:
    """Where one scenario's indexers read and write: unique topics, group and indices."""

    name: str
    kafka_bootstrap: str
    es_url: str
    max_batch: int = 2000

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.kafka_bootstrap,
            topic_prefix=f"{self.name}.",
            group_id=self.name,
        )

    @property
    def names(self) -> IndexNames:
        return IndexNames(f"{self.name}-")

    def state_dir(self, replica: str) -> Path:
        """A replica's state store: kept across its restarts, like a pod's volume."""
        return FAULTS_DIR / "state" / self.name / replica

    def indexer_env(self, replica: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS_PREFIXES)}
        env.update(
            INDEXER_STATE_DIR=str(self.state_dir(replica)),
            INDEXER_INSTANCE_ID=replica,
            KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap,
            KAFKA_TOPIC_PREFIX=f"{self.name}.",
            KAFKA_GROUP_ID=self.name,
            ELASTICSEARCH_URL=self.es_url,
            ELASTICSEARCH_INDEX_PREFIX=f"{self.name}-",
            INDEXER_METRICS_PORT="0",
            INDEXER_MAX_BATCH=str(self.max_batch),
            INDEXER_RETRY_MAX_S="2",
            PYTHONUNBUFFERED="1",
        )
        # an experiment's indexer settings (e.g. FAULTS_INDEXER_ENV="INDEXER_DEFER_LAG=5000")
        for pair in os.environ.get("FAULTS_INDEXER_ENV", "").split():
            name, _, value = pair.partition("=")
            env[name] = value
        return env


class IndexerProcess:
    """`python -m artifact_search.cli indexer` as a child process with its own log file.

    `replica` names the state directory and instance id: several processes of one replica
    are restarts of the same pod (same volume); different replicas share the work.
    """

    def __init__(self, wiring: Wiring, label: str, replica: str = "a") -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.replica = replica
        self.label = label
        self.log_path = LOG_DIR / f"{wiring.name}-{label}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artifact_search.cli", "indexer"],
            cwd=REPO_ROOT,
            env=wiring.indexer_env(replica),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, seconds: float) -> int | None:
        """The exit code if the process ends within `seconds`, else None (blocking)."""
        try:
            return self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def kill9(self) -> None:
        """SIGKILL this process (only this pid) and reap it."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------------------------
# Kafka side: topics, publishing, offsets
# --------------------------------------------------------------------------------------------
class Topics:
    """The scenario's topics and its consumer group's progress."""

    def __init__(
        self, wiring: Wiring, partitions: int = 3, configs: dict[str, str] | None = None
    ) -> None:
        self.wiring = wiring
        self.kafka = wiring.kafka
        self.partitions = partitions
        self.configs = configs or {}
        self.entity_topics = [self.kafka.topic_for(e) for e in ENTITIES]
        self.parent_topics = [
            t for t in self.entity_topics if t != self.kafka.topic_for("artifact")
        ]
        self.group_topics = [self.kafka.topic_for("artifact"), self.kafka.members_topic]
        self.all_topics = [*self.entity_topics, self.kafka.dlq_topic, self.kafka.members_topic]
        #: the replicas whose global (parent) progress counts; set by the scenario
        self.replicas: Callable[[], set[str]] = lambda: {"a"}

    def _admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(
            bootstrap_servers=self.kafka.bootstrap_servers, request_timeout_ms=10_000
        )

    async def create(self) -> None:
        admin = self._admin()
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(t, self.partitions, 1, topic_configs=self.configs)
                    for t in self.all_topics
                    if t != self.kafka.members_topic
                ]
                + [
                    NewTopic(
                        self.kafka.members_topic,
                        self.partitions,
                        1,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                ]
            )
        finally:
            await admin.close()

    async def delete(self) -> None:
        admin = self._admin()
        await admin.start()
        try:
            await admin.delete_topics(self.all_topics)
        finally:
            await admin.close()

    async def publish(self, records: Sequence[Record]) -> None:
        """Publish in order with acks=all; per-key order is kept (one producer, keyed)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap_servers,
            acks="all",
            linger_ms=20,
            enable_idempotence=True,
        )
        await producer.start()
        try:
            pending = []
            for entity, key, value in records:
                pending.append(
                    await producer.send(self.kafka.topic_for(entity), value=value, key=key)
                )
                if len(pending) >= 5000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    async def end_offsets(self, topics: Iterable[str] | None = None) -> dict[TopicPartition, int]:
        """End offsets of `topics` (default: the entity topics), every partition."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap_servers, request_timeout_ms=10_000
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(t, p)
                for t in (topics or self.entity_topics)
                for p in range(self.partitions)
            ]
            return dict(await consumer.end_offsets(tps))
        finally:
            await consumer.stop()

    async def committed(self, group: str | None = None) -> dict[TopicPartition, int]:
        admin = self._admin()
        await admin.start()
        try:
            got = await admin.list_consumer_group_offsets(group or self.kafka.group_id)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in got.items() if meta.offset >= 0}

    async def lag(self) -> tuple[int, int, int]:
        """(lag, applied total, end total) over the entity topics, plus the member topic's lag.

        The group commits the artifact and member partitions; each replica commits its
        copy of the parent topics under `<group>.global.<replica>` (the slowest counts).
        """
        ends = await self.end_offsets([*self.entity_topics, self.kafka.members_topic])
        group = await self.committed()
        done = 0
        members_lag = 0
        for tp, end in ends.items():
            if tp.topic == self.kafka.members_topic:
                members_lag += end - min(group.get(tp, 0), end)
            elif tp.topic in self.group_topics:
                done += min(group.get(tp, 0), end)
        parents = [
            await self.committed(f"{self.kafka.group_id}.global.{replica}")
            for replica in sorted(self.replicas())
        ]
        for tp, end in ends.items():
            if tp.topic in self.parent_topics:
                done += min((min(p.get(tp, 0), end) for p in parents), default=0)
        total = sum(end for tp, end in ends.items() if tp.topic != self.kafka.members_topic)
        return total - done + members_lag, done, total

    async def dead_letters(self) -> list[dict[str, str]]:
        """Headers of every record on the dead-letter topic."""
        ends = await self.end_offsets([self.kafka.dlq_topic])
        want = sum(ends.values())
        if want == 0:
            return []
        consumer = AIOKafkaConsumer(
            self.kafka.dlq_topic,
            bootstrap_servers=self.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        out: list[dict[str, str]] = []
        try:
            deadline = time.monotonic() + 30
            while len(out) < want and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                for msgs in batch.values():
                    for msg in msgs:
                        out.append({k: v.decode("utf-8", "replace") for k, v in msg.headers})
        finally:
            await consumer.stop()
        return out


async def retry_async(what: str, fn: Any, seconds: float = 60) -> Any:
    """Call `await fn()` until it succeeds or `seconds` passed (servers settling)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await fn()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} kept failing: {exc!r}") from exc
            await asyncio.sleep(1)


# --------------------------------------------------------------------------------------------
# the independent oracle
# --------------------------------------------------------------------------------------------
@dataclass
class Expected:
    """What the service must answer once every event of the stream is consumed."""

    artifacts: dict[str, dict[str, Any]]
    collections: dict[str, dict[str, Any]]
    counts: list[tuple[str, dict[str, Any], int]]
    #: (entity, id) -> (greatest version sent, survives)
    versions: dict[tuple[str, str], tuple[int, bool]]


def expected_state(dataset: Dataset, records: Sequence[Record]) -> Expected:
    """Everything the scenario checks, computed from the dataset and the records alone."""
    runs = {r["id"]: r for r in dataset.flow_runs}
    tasks = {t["id"] for t in dataset.task_runs}
    flows = {f["id"] for f in dataset.flows}
    deployments = {d["id"] for d in dataset.deployments}
    subflow_parents = {r["parent_task_run_id"] for r in dataset.flow_runs} - {None}
    arts = dataset.artifacts
    collections = {c["key"]: c for c in dataset.collections()}

    def run_of(art: dict[str, Any]) -> dict[str, Any] | None:
        return runs.get(art.get("flow_run_id") or "")

    def n(pred: Any) -> int:
        return sum(1 for a in arts if pred(a))

    counts: list[tuple[str, dict[str, Any], int]] = [
        ("/api/artifacts/count", {}, len(arts)),
        ("/api/artifacts/latest/count", {}, len(collections)),
        (
            "/api/artifacts/count",
            {"artifacts": {"key": {"exists_": True}}},
            n(lambda a: a.get("key") is not None),
        ),
        ("/api/artifacts/count", {"flow_runs": {}}, n(lambda a: run_of(a) is not None)),
        (
            "/api/artifacts/count",
            {"flow_runs": {"state": {"type": {"any_": ["FAILED", "CRASHED"]}}}},
            n(lambda a: (run_of(a) or {}).get("state_type") in ("FAILED", "CRASHED")),
        ),
        (
            "/api/artifacts/count",
            {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
            n(lambda a: (run_of(a) or {}).get("state_type") == "COMPLETED"),
        ),
        (
            "/api/artifacts/count",
            {"task_runs": {"subflow_runs": {"exists_": True}}},
            n(lambda a: a.get("task_run_id") in tasks and a.get("task_run_id") in subflow_parents),
        ),
        ("/api/artifacts/count", {"task_runs": {}}, n(lambda a: a.get("task_run_id") in tasks)),
        (
            "/api/artifacts/count",
            {"flows": {}},
            n(lambda a: (run_of(a) or {}).get("flow_id") in flows),
        ),
        (
            "/api/artifacts/count",
            {"deployments": {}},
            n(lambda a: (run_of(a) or {}).get("deployment_id") in deployments),
        ),
        (
            "/api/artifacts/latest/count",
            {"flow_runs": {}},
            sum(1 for c in collections.values() if c.get("flow_run_id") in runs),
        ),
    ]

    versions: dict[tuple[str, str], tuple[int, bool]] = {}
    for entity, _key, value in records:
        if value is None:
            continue
        try:
            env = orjson.loads(value)
            ident, version = (entity, str(env["entity_id"])), int(env["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # poison records are the dead-letter topic's business
        if env.get("entity") != entity:
            continue
        best = versions.get(ident)
        if best is None or version > best[0]:
            versions[ident] = (version, False)
    for entity in ENTITIES:
        for data in dataset.entities(entity):
            version, _ = versions[(entity, data["id"])]
            versions[(entity, data["id"])] = (version, True)
    return Expected(
        artifacts={a["id"]: a for a in arts},
        collections=collections,
        counts=counts,
        versions=versions,
    )


@dataclass
class StateReport:
    """Differences between the service's answers and the expected state (all must be 0)."""

    artifacts_checked: int = 0
    collections_checked: int = 0
    missing_artifacts: int = 0
    wrong_artifacts: int = 0
    unexpected_artifacts: int = 0
    missing_collections: int = 0
    wrong_collections: int = 0
    unexpected_collections: int = 0
    count_mismatches: list[str] = field(default_factory=list)
    stale_versions: int = 0
    ahead_versions: int = 0
    liveness_mismatches: int = 0
    missing_documents: int = 0
    unexpected_documents: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Effects missing from the index: absent or stale documents and answers."""
        return (
            self.missing_artifacts
            + self.missing_collections
            + self.stale_versions
            + self.missing_documents
        )

    @property
    def duplicated(self) -> int:
        """Effects present that should not be: extra or wrong documents and answers."""
        return (
            self.unexpected_artifacts
            + self.unexpected_collections
            + self.wrong_artifacts
            + self.wrong_collections
            + self.ahead_versions
            + self.liveness_mismatches
            + self.unexpected_documents
        )

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and not self.count_mismatches

    def note(self, text: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(text[:400])


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
    resp = await client.post(path, json=body)
    if resp.status_code != 200:
        raise AssertionError(f"{path} {body} -> {resp.status_code} {resp.text[:300]}")
    return resp.json()


async def check_answers(client: httpx.AsyncClient, expected: Expected) -> StateReport:
    """Every live artifact and collection by id/key, exact JSON, and the join-filter counts."""
    report = StateReport()
    ids = sorted(expected.artifacts)
    for chunk in _chunks(ids, 200):
        rows = await _post(
            client, "/api/artifacts/filter", {"artifacts": {"id": {"any_": chunk}}, "limit": 200}
        )
        got = {row["id"]: row for row in rows}
        for art_id in chunk:
            row = got.get(art_id)
            if row is None:
                report.missing_artifacts += 1
                report.note(f"missing artifact {art_id}")
            elif row != expected.artifacts[art_id]:
                report.wrong_artifacts += 1
                want = expected.artifacts[art_id]
                diff = {
                    f: (row.get(f), want.get(f)) for f in {*row, *want} if row.get(f) != want.get(f)
                }
                report.note(f"artifact {art_id}: (got, want) {diff}")
        report.artifacts_checked += len(chunk)
    keys = sorted(expected.collections)
    for chunk in _chunks(keys, 200):
        rows = await _post(
            client,
            "/api/artifacts/latest/filter",
            {"artifacts": {"key": {"any_": chunk}}, "limit": 200},
        )
        got = {row["key"]: row for row in rows}
        for key in chunk:
            row = got.get(key)
            if row is None:
                report.missing_collections += 1
                report.note(f"missing collection {key!r}")
            elif row != expected.collections[key]:
                report.wrong_collections += 1
                want = expected.collections[key]
                diff = {
                    f: (row.get(f), want.get(f)) for f in {*row, *want} if row.get(f) != want.get(f)
                }
                report.note(f"collection {key!r}: (got, want) {diff}")
        report.collections_checked += len(chunk)
    for path, body, want in expected.counts:
        got_count = await _post(client, path, body)
        if got_count != want:
            report.count_mismatches.append(f"{path} {body}: {got_count} != {want}")
            if body == {} and path == "/api/artifacts/count" and got_count > want:
                report.unexpected_artifacts += got_count - want
            if body == {} and path == "/api/artifacts/latest/count" and got_count > want:
                report.unexpected_collections += got_count - want
    return report


async def _scan(es: AsyncElasticsearch, index: str, fields: list[str]) -> list[dict[str, Any]]:
    """Every document of `index` (selected fields), walked under a point in time."""
    pit = (await es.open_point_in_time(index=index, keep_alive="2m"))["id"]
    out: list[dict[str, Any]] = []
    after: list[Any] | None = None
    try:
        while True:
            body: dict[str, Any] = {
                "size": 5000,
                "sort": [{"_shard_doc": "asc"}],
                "_source": fields,
                "query": {"match_all": {}},
                "pit": {"id": pit, "keep_alive": "2m"},
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            resp = await es.search(body=body)
            pit = resp.get("pit_id", pit)
            hits = resp["hits"]["hits"]
            out.extend({"_id": h["_id"], **h["_source"]} for h in hits)
            if len(hits) < 5000:
                return out
            after = hits[-1]["sort"]
    finally:
        await es.close_point_in_time(id=pit)


async def check_documents(es_url: str, names: IndexNames, expected: Expected) -> StateReport:
    """Stored versions and liveness of every artifact document, and no live collection
    beyond the expected ones, read from Elasticsearch."""
    report = StateReport()
    es = AsyncElasticsearch(es_url, request_timeout=60)
    try:
        await es.indices.refresh(index=",".join(names.all_aliases()))
        stored: dict[tuple[str, str], tuple[int, bool]] = {}
        for doc in await _scan(es, names.artifacts, ["version", "live"]):
            stored[("artifact", doc["_id"])] = (int(doc["version"]), bool(doc.get("live")))
        collections = {
            doc["_id"] for doc in await _scan(es, names.collections, ["live"]) if doc.get("live")
        }
    finally:
        await es.close()
    want_collections = {collection_id(key) for key in expected.collections}
    for ident in sorted(collections - want_collections)[:3]:
        report.note(f"unexpected live collection {ident}")
    report.unexpected_documents += len(collections - want_collections)
    report.missing_documents += len(want_collections - collections)
    for ident, (version, live) in expected.versions.items():
        if ident[0] != "artifact":
            continue  # parents live in the indexer's state store, not in Elasticsearch
        got = stored.get(ident)
        if got is None:
            report.missing_documents += 1
            report.note(f"no document for {ident}")
            continue
        if got[0] < version:
            report.stale_versions += 1
            report.note(f"{ident} at version {got[0]} < {version}")
        elif got[0] > version:
            report.ahead_versions += 1
            report.note(f"{ident} at version {got[0]} > {version}")
        if got[1] != live:
            report.liveness_mismatches += 1
            report.note(f"{ident} live={got[1]}, expected {live}")
    extra = set(stored) - {i for i in expected.versions if i[0] == "artifact"}
    report.unexpected_documents += len(extra)
    for ident in sorted(extra)[:3]:
        report.note(f"unexpected document {ident}")
    return report


def merge(*reports: StateReport) -> StateReport:
    out = StateReport()
    for rep in reports:
        for name, value in vars(rep).items():
            current = getattr(out, name)
            setattr(out, name, current + value)
    return out


async def wait_converged(
    topics: Topics,
    client: httpx.AsyncClient,
    expected: Expected,
    seconds: float,
    probes_ok: int = 2,
) -> float:
    """Wait for lag 0 and every expected count (join filters included), each probe after a
    refresh; returns the monotonic time it was reached.

    Lag 0 alone is not convergence: the last step's writes become searchable at the next
    refresh, and rewrites reached through a parent (fan-out, marks) can be written by a step
    after the one that committed the last offset. A probe without a refresh could see a
    state that is still settling and call it wrong, or right by chance."""
    deadline = time.monotonic() + seconds
    want = expected.counts
    streak = 0
    first_ok: float | None = None
    last = "no probe yet"
    es = AsyncElasticsearch(topics.wiring.es_url, request_timeout=60)
    aliases = ",".join(topics.wiring.names.all_aliases())
    try:
        while time.monotonic() < deadline:
            try:
                lag, done, total = await topics.lag()
                await es.indices.refresh(index=aliases)
                answers = [await _post(client, p, b) for p, b, _ in want]
                ok = lag == 0 and answers == [n for _, _, n in want]
                last = f"lag {lag} ({done}/{total}), counts {answers} want {[n for *_, n in want]}"
            except Exception as exc:  # servers settling after a fault
                ok = False
                last = f"probe failed: {exc!r}"[:300]
            if ok:
                streak += 1
                first_ok = first_ok or time.monotonic()
                if streak >= probes_ok:
                    assert first_ok is not None
                    return first_ok
            else:
                streak, first_ok = 0, None
            await asyncio.sleep(0.5)
    finally:
        await es.close()
    raise AssertionError(f"no convergence within {seconds:.0f}s: {last}")


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """One scenario's topics, indices, query client and indexer processes."""

    servers: PrivateServers
    wiring: Wiring
    topics: Topics
    client: httpx.AsyncClient
    processes: list[IndexerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.topics.replicas = self.live_replicas

    def live_replicas(self) -> set[str]:
        """Replicas with a running process (their parent progress counts towards the lag)."""
        return {p.replica for p in self.processes if p.alive()} or {"a"}

    def start_indexer(self, label: str, replica: str = "a") -> IndexerProcess:
        proc = IndexerProcess(self.wiring, label, replica)
        self.processes.append(proc)
        return proc


@contextlib.asynccontextmanager
async def open_scenario(
    servers: PrivateServers,
    name: str,
    max_batch: int = 2000,
    topic_configs: dict[str, str] | None = None,
) -> AsyncIterator[Scenario]:
    """Unique topics and indices on the private servers; everything removed afterwards."""
    wiring = Wiring(
        f"f-{name}-{uuid.uuid4().hex[:6]}", servers.kafka_bootstrap, servers.es_url, max_batch
    )
    topics = Topics(wiring, configs=topic_configs)
    await retry_async("creating topics", topics.create)
    es = AsyncElasticsearch(servers.es_url, request_timeout=60)
    await ensure_indices(es, wiring.names)
    app = create_app(
        QuerySettings(), ElasticsearchSettings(url=servers.es_url, index_prefix=wiring.names.prefix)
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc", timeout=60
    )
    scenario = Scenario(servers, wiring, topics, client)
    try:
        yield scenario
    finally:
        for proc in scenario.processes:
            proc.stop()
        await client.aclose()
        # a scenario may end with a server down: bring it back before cleaning up
        servers.run("start", *TARGETS)
        with contextlib.suppress(Exception):
            await retry_async("deleting topics", topics.delete, 30)
        with contextlib.suppress(Exception):
            await drop_indices(es, wiring.names)
        await es.close()
        shutil.rmtree(FAULTS_DIR / "state" / wiring.name, ignore_errors=True)


def stream(seed: int, artifacts: int, poison: int = 0) -> tuple[Dataset, list[Record]]:
    """The dataset and its noisy stream, with `poison` undecodable records mixed in."""
    dataset = generate_dataset(seed, DatasetScale.for_artifacts(artifacts))
    records = dataset_records(dataset, seed, HARD)
    rng = random.Random(seed)
    for _ in range(poison):
        bad: Record = ("artifact", str(uuid.UUID(int=rng.getrandbits(128))).encode(), b"{oops")
        records.insert(rng.randrange(len(records) + 1), bad)
    return dataset, records


async def full_check(sc: Scenario, expected: Expected) -> StateReport:
    answers = await check_answers(sc.client, expected)
    documents = await check_documents(sc.servers.es_url, sc.wiring.names, expected)
    return merge(answers, documents)


async def wait_progress(sc: Scenario, at_least: int, seconds: float) -> int:
    """Wait until the group committed at least `at_least` records; the committed total."""
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        _, done, _ = await retry_async("reading offsets", sc.topics.lag, 30)
        if done >= at_least:
            return done
        await asyncio.sleep(0.5)
    logs = "\n".join(
        f"--- indexer {p.label} (replica {p.replica}, alive {p.alive()}):\n{p.log_text()[-2000:]}"
        for p in sc.processes
    )
    raise AssertionError(
        f"only {done} records committed, wanted {at_least} within {seconds}s\n{logs}"
    )


def figures_of(
    records: list[Record],
    expected: Expected,
    committed: int,
    report: StateReport,
    dead: list[dict[str, str]],
) -> dict[str, Any]:
    distinct = {(h.get("dlq.topic"), h.get("dlq.partition"), h.get("dlq.offset")) for h in dead}
    return {
        "events_produced": len(records),
        "events_indexed": committed,
        "lost": report.lost,
        "duplicated": report.duplicated,
        "count_mismatches": report.count_mismatches,
        "dead_lettered_distinct": len(distinct),
        "dead_letter_records": len(dead),
        "artifacts_checked": report.artifacts_checked,
        "collections_checked": report.collections_checked,
        "documents_checked": len(expected.versions),
        "examples": report.examples,
    }


def assert_exact(report: StateReport) -> None:
    assert report.ok, (
        f"lost={report.lost} duplicated={report.duplicated} "
        f"counts={report.count_mismatches} examples={report.examples}"
    )


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
FIGURES_FILE = FAULTS_DIR / "figures.jsonl"


def record_figures(scenario: str, figures: dict[str, Any]) -> None:
    """Append one scenario's figures to .local/faults/figures.jsonl and print them."""
    FAULTS_DIR.mkdir(parents=True, exist_ok=True)
    line = orjson.dumps({"scenario": scenario, "at": time.time(), **figures}).decode()
    with FIGURES_FILE.open("a") as fh:
        fh.write(line + "\n")
    print(f"\n[faults] {line}")

"""The image, run for real: bootstrap, the API and the indexer as containers (host network,
read-only root filesystem, uid 10001, no capabilities) against the real Kafka and
Elasticsearch; events published to Kafka come back from the containerised API.

Start-up times (``docker run`` to ready) and the image size are printed (``pytest -s``) and
recorded as test properties.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import HARD, dataset_records
from services.config import KafkaSettings
from services.es.admin import drop_indices
from services.es.indices import IndexNames
from tests.containers.docker_engine import docker
from tests.serving import free_port
from tests.waiting import wait_answer

pytestmark = pytest.mark.timeout(1800)  # a cold machine builds the base image first

UID = "10001"
HARDENING = (
    "--network=host",
    "--read-only",
    f"--user={UID}:{UID}",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges:true",
)


@dataclass
class Deployment:
    """The names of one test's containers, topics and indices on the shared servers."""

    image: str
    name: str
    env: dict[str, str]
    api_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"],
            topic_prefix=self.env["KAFKA_TOPIC_PREFIX"],
        )

    def run(self, role: str, *args: str, detach: bool = True, extra: tuple[str, ...] = ()) -> str:
        """`docker run` the image in `role` with the hardening flags; returns the container name
        (detached) or its output (foreground, removed after)."""
        container = f"{self.name}-{role}"
        env = [f"--env={k}={v}" for k, v in self.env.items()]
        mode = ("--detach",) if detach else ("--rm",)
        proc = docker(
            "run", *mode, f"--name={container}", *HARDENING, *env, *extra, self.image, role, *args,
            timeout=300,
        )  # fmt: skip
        if detach:
            self.containers.append(container)
            return container
        return proc.stdout + proc.stderr

    def logs(self) -> str:
        out = []
        for c in self.containers:
            proc = docker("logs", "--tail=40", c, check=False)
            out.append(f"----- {c} -----\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    def running(self, container: str) -> bool:
        proc = docker("inspect", "-f", "{{.State.Running}}", container, check=False)
        return proc.stdout.strip() == "true"


def _wait_ready(dep: Deployment, container: str, url: str, started: float, limit: float) -> float:
    """Seconds from `started` until `url` answers 200; fails if the container stops first."""
    deadline = started + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        if not dep.running(container):
            pytest.fail(f"{container} stopped before it was ready:\n{dep.logs()}", pytrace=False)
        time.sleep(0.1)
    pytest.fail(f"{url} not ready within {limit:.0f}s:\n{dep.logs()}", pytrace=False)


@pytest.fixture(scope="module")
def deployment(
    app_image: str, kafka_bootstrap: str, elasticsearch_url: str
) -> Iterator[tuple[Deployment, dict[str, float]]]:
    """bootstrap (one-shot), then the API and the indexer, each timed from `docker run` to ready."""
    name = f"ct-{uuid.uuid4().hex[:8]}"
    dep = Deployment(
        image=app_image,
        name=name,
        env={
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_TOPIC_PREFIX": f"{name}.",
            "KAFKA_GROUP_ID": name,
            "ELASTICSEARCH_URL": elasticsearch_url,
            "ELASTICSEARCH_INDEX_PREFIX": f"{name}-",
            "LOG_LEVEL": "INFO",
        },
    )
    volume = f"{name}-state"
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        dep.run("bootstrap", detach=False)
        timings["bootstrap"] = time.monotonic() - started
        dep.env.update(QUERY_HOST="127.0.0.1", QUERY_PORT=str(dep.api_port))
        started = time.monotonic()
        api = dep.run("api")
        timings["api"] = _wait_ready(
            dep, api, f"http://127.0.0.1:{dep.api_port}/api/ready", started, 120
        )
        docker("volume", "create", volume)
        dep.volumes.append(volume)
        dep.env.update(
            INDEXER_METRICS_HOST="127.0.0.1",
            INDEXER_METRICS_PORT=str(dep.metrics_port),
            INDEXER_INSTANCE_ID=f"{name}-0",
        )
        started = time.monotonic()
        indexer = dep.run("indexer", extra=(f"--volume={volume}:/var/lib/indexer",))
        timings["indexer"] = _wait_ready(
            dep, indexer, f"http://127.0.0.1:{dep.metrics_port}/readyz", started, 180
        )
        print(f"[containers] start-up to ready (s): {timings}")
        yield dep, timings
    finally:
        for c in dep.containers:
            docker("rm", "--force", "--volumes", c, check=False)
        for v in dep.volumes:
            docker("volume", "rm", "--force", v, check=False)


@pytest.fixture(scope="module")
async def cleanup_names(
    deployment: tuple[Deployment, dict[str, float]], elasticsearch_url: str
) -> AsyncIterator[None]:
    """Deletes the test's topics and indices after the module."""
    dep, _ = deployment
    yield
    admin = AIOKafkaAdminClient(bootstrap_servers=dep.env["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(dep.env["KAFKA_TOPIC_PREFIX"])]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
    es = AsyncElasticsearch(elasticsearch_url)
    try:
        await drop_indices(es, IndexNames(dep.env["ELASTICSEARCH_INDEX_PREFIX"]))
    finally:
        await es.close()


async def _publish(kafka: KafkaSettings, records: list[tuple[str, bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for entity, key, value in records:
            await producer.send(kafka.topic_for(entity), value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def test_image_size_and_user(app_image: str, record_property: Any) -> None:
    """The image runs as uid 10001 with `artifact-search` as its entry point."""
    info = docker(
        "image", "inspect", "-f", "{{.Size}} {{.Config.User}} {{.Config.Entrypoint}}", app_image
    )
    size, user, entrypoint = info.stdout.split(" ", 2)
    record_property("image_bytes", int(size))
    print(f"[containers] {app_image}: {int(size) / 1e6:.0f} MB")
    assert user == f"{UID}:{UID}"
    assert "artifact-search" in entrypoint
    out = docker("run", "--rm", *HARDENING, app_image, "--help").stdout
    assert "indexer" in out and "api" in out


async def test_events_through_the_containers(
    deployment: tuple[Deployment, dict[str, float]], cleanup_names: None, record_property: Any
) -> None:
    """Events published to Kafka reach Elasticsearch through the containerised indexer and come
    back, exactly, from the containerised API."""
    dep, timings = deployment
    for role, seconds in timings.items():
        record_property(f"ready_seconds_{role}", round(seconds, 2))
    dataset = generate_dataset(14, DatasetScale.tiny())
    await _publish(dep.kafka, dataset_records(dataset, 14, HARD))
    base = f"http://127.0.0.1:{dep.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        want = len(dataset.artifacts)
        got = await wait_answer(client, "/api/artifacts/count", {}, want, 120)
        assert got == want, dep.logs()
        keys = {a["key"] for a in dataset.artifacts if a["key"] is not None}
        assert await wait_answer(client, "/api/artifacts/latest/count", {}, len(keys), 60) == len(
            keys
        )
        rows = (await client.post("/api/artifacts/filter", json={"limit": 200})).json()
        by_id = {a["id"]: a for a in dataset.artifacts}
        assert sorted(r["id"] for r in rows) == sorted(by_id)
        for row in rows:
            assert row == by_id[row["id"]]
        one = dataset.artifacts[0]
        assert (await client.get(f"/api/artifacts/{one['id']}")).json() == one
        metrics = (await client.get(f"http://127.0.0.1:{dep.metrics_port}/metrics")).text
        assert "indexer_events_total" in metrics


def test_containers_are_non_root_on_a_read_only_root(
    deployment: tuple[Deployment, dict[str, float]],
) -> None:
    """Both long-running containers run as uid 10001 and cannot write their root filesystem; the
    indexer's state store lives on its volume."""
    dep, _ = deployment
    for container in dep.containers:
        assert docker("exec", container, "id", "-u").stdout.strip() == UID
        probe = docker("exec", container, "touch", "/opt/venv/probe", check=False)
        assert probe.returncode != 0 and "Read-only file system" in probe.stderr
        assert dep.running(container), dep.logs()
    indexer = next(c for c in dep.containers if c.endswith("-indexer"))
    state = docker("exec", indexer, "ls", "/var/lib/indexer/state").stdout.split()
    assert state, "the indexer wrote no state store on its volume"

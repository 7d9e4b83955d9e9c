"""deploy/compose.yaml started for real: Kafka, Elasticsearch, bootstrap, the indexer and the
API, every image built on this machine (deploy/docker/build.sh all: the Debian base, Kafka and
Elasticsearch from the Maven artifacts, the app from the wheelhouse); the demo dataset
published from inside the stack comes back, exactly, from the API on its published port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from datagen.dataset import DatasetScale, generate_dataset
from datagen.events import dataset_events, records_jsonl
from tests.waiting import wait_answer

pytestmark = pytest.mark.timeout(2400)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
BUILD_SH = REPO / "deploy" / "docker" / "build.sh"
DEMO_SEED, DEMO_ARTIFACTS = 11, 120


def _compose_cli() -> list[str]:
    """`docker compose` (the plugin) when present, else Debian's `docker-compose`."""
    plugin = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False, timeout=30
    )
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if exe := shutil.which("docker-compose"):
        return [exe]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed "
        "(Debian: apt-get install docker-compose)",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """One compose project with its own name, volumes and host ports."""

    cli: list[str]
    project: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        proc = subprocess.run(
            [*self.cli, "-p", self.project, "-f", str(COMPOSE_FILE), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"compose {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-4000:]}\n{self.logs()}",
                pytrace=False,
            )
        return proc.stdout + proc.stderr

    def logs(self) -> str:
        return self.compose("logs", "--tail=30", timeout=120, check=False)[-8000:]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['API_HOST_PORT']}"


@pytest.fixture(scope="module")
def stack(docker_engine: None) -> Iterator[tuple[Stack, dict[str, float]]]:
    """Every image built here, then `up --build` until the API is ready."""
    cli = _compose_cli()
    timings: dict[str, float] = {}
    started = time.monotonic()
    images = {
        "IMAGE": "artifact-search:local",
        "KAFKA_IMAGE": "artifact-search-kafka:local",
        "ES_IMAGE": "artifact-search-elasticsearch:local",
        "BASE_IMAGE": os.environ.get("BASE_IMAGE", "artifact-search-base:bookworm"),
    }
    build = subprocess.run(
        ["bash", str(BUILD_SH), "all"],
        env={**os.environ, **images},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if build.returncode != 0:
        pytest.fail(f"{BUILD_SH} all failed:\n{build.stderr[-5000:]}", pytrace=False)
    timings["build"] = time.monotonic() - started
    print(f"[compose] images built in {timings['build']:.0f}s:\n{build.stderr}")
    env = {
        **os.environ,
        **images,
        "APP_IMAGE": f"artifact-search-compose:{uuid.uuid4().hex[:6]}",
        "API_HOST_PORT": str(_free_port()),
        "METRICS_HOST_PORT": str(_free_port()),
        "ES_HOST_PORT": str(_free_port()),
    }
    stack = Stack(cli, f"ct{uuid.uuid4().hex[:8]}", env)
    try:
        started = time.monotonic()
        stack.compose("up", "--detach", "--build", timeout=900)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{stack.api}/api/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"the compose API was not ready in 300s:\n{stack.logs()}", pytrace=False)
        timings["up_to_ready"] = time.monotonic() - started
        print(f"[compose] timings (s): {timings}")
        yield stack, timings
    finally:
        stack.compose("down", "--volumes", "--rmi", "local", timeout=300, check=False)
        subprocess.run(
            ["docker", "image", "rm", env["APP_IMAGE"]], capture_output=True, check=False
        )


async def test_compose_stack_answers_the_demo_dataset(
    stack: tuple[Stack, dict[str, float]], record_property: Any, tmp_path: Path
) -> None:
    """The demo events, written here by `datagen` (not in the image) and published inside the
    stack by the image's `produce` (what `make compose-demo` does); the API answers every
    artifact."""
    s, timings = stack
    for name, seconds in timings.items():
        record_property(f"compose_{name}_seconds", round(seconds, 1))
    events = tmp_path / "demo.jsonl"
    events.write_text(records_jsonl(dataset_events(seed=DEMO_SEED, artifacts=DEMO_ARTIFACTS)))
    events.chmod(0o644)  # read by the container's uid 10001
    out = s.compose(
        "run", "--rm", "-v", f"{events}:/tmp/demo.jsonl:ro", "bootstrap", "produce",
        "/tmp/demo.jsonl",
    )  # fmt: skip
    assert "published" in out
    dataset = generate_dataset(DEMO_SEED, DatasetScale.for_artifacts(DEMO_ARTIFACTS))
    want = len(dataset.artifacts)
    async with httpx.AsyncClient(base_url=s.api, timeout=10) as client:
        got = await wait_answer(client, "/api/artifacts/count", {}, want, 180)
        assert got == want, s.logs()
        rows = (await client.post("/api/artifacts/filter", json={"limit": 200})).json()
    by_id = {a["id"]: a for a in dataset.artifacts}
    assert len(rows) == min(want, 200)
    for row in rows:
        assert row == by_id[row["id"]]
    ps = s.compose("ps")
    for service in ("kafka", "elasticsearch", "indexer", "api"):
        assert any(service in line and "Up" in line for line in ps.splitlines()), ps

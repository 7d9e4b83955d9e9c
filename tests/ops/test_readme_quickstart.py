"""The README's quickstart, run as a newcomer runs it: `make up DEMO=0`, `make up`, every
`curl` the README shows (the saved search and the credentials example included), `make status`,
`make down`, `make reset`.

Against private servers: the Makefile's own targets start them through deploy/local/servers.sh
with this test's directory and ports (as the fault suite does), so `make down` and `make reset`
stop and wipe only what this test started, never the shared servers the other tests use. Only
what a reader would change is changed: 127.0.0.1:4200 becomes the port the API got here, and the
placeholders `<artifact-id>` and `<key>` an artifact of the demo data. Every curl runs with
`--fail-with-body`, so an HTTP error fails its block.

The README's other commands run elsewhere: `make venv`, `make test` and `make test-pythons` are
what CI runs (.ci/run); the containers and compose commands in tests/containers and
tests/compose; `artifact-search` subcommands in tests/ops (alerts, dashboard), tests/e2e
(tracing, replay) and tests/sync; `helm`, `kubectl` and `make helm-chart` are rendered and
linted in tests/ops (no cluster runs here); tests/ops/test_readme_commands.py checks that every
command names something that exists.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from datagen.dataset import DatasetScale, generate_dataset
from tests.ops.readme import blocks
from tests.serving import free_port

REPO = Path(__file__).resolve().parents[2]
SERVERS_SH = REPO / "deploy" / "local" / "servers.sh"
#: beside the shared servers' state, like the fault suite's (Elasticsearch's user must be able
#: to traverse it: CI moves SERVERS_LOCAL_DIR out of the repository)
LOCAL = Path(os.environ.get("SERVERS_LOCAL_DIR") or REPO / ".local") / "readme-quickstart"
#: settings of the app and the servers that must not leak in from the test's environment
#: (the shared servers' addresses above all); the JDK locations stay
_LEAKS = re.compile(
    r"^(KAFKA|ELASTICSEARCH|INDEXER|QUERY|ALERTS|SYNC|BACKFILL|POSTGRES|ES|PG|OTEL|LOG)_"
    r"(?!JAVA_HOME$)"
)
#: the demo `make up` publishes (`python -m datagen demo` defaults)
DEMO_SEED, DEMO_ARTIFACTS = 7, 500
SEP = "=====8<====="


@dataclass
class Quickstart:
    """The environment of a newcomer's shell, with private ports and directories."""

    local: Path
    ports: dict[str, int] = field(
        default_factory=lambda: {
            name: free_port()
            for name in ("kafka", "controller", "es", "transport", "pg", "api", "indexer", "alerts")
        }
    )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def run_dir(self) -> Path:
        return self.local / "run"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not _LEAKS.match(k)}
        env.update(
            PATH=f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
            MAKEFLAGS="",
            SERVERS_LOCAL_DIR=str(self.local),
            KAFKA_PORT=str(self.ports["kafka"]),
            KAFKA_CONTROLLER_PORT=str(self.ports["controller"]),
            KAFKA_HEAP="384m",
            ES_PORT=str(self.ports["es"]),
            ES_TRANSPORT_PORT=str(self.ports["transport"]),
            ES_HEAP="512m",
            PG_PORT=str(self.ports["pg"]),
            QUERY_PORT=str(self.ports["api"]),
            INDEXER_METRICS_PORT=str(self.ports["indexer"]),
            ALERTS_METRICS_PORT=str(self.ports["alerts"]),
            INDEXER_STATE_DIR=str(self.local / "indexer-state"),
            RUN_DIR=str(self.run_dir),
            # the README's saved search posts to hooks.example, which it says to allow
            ALERTS_WEBHOOK_ALLOWED_HOSTS="hooks.example",
        )
        env.update(extra)
        return env

    def make(self, *args: str, timeout: float = 600) -> str:
        """`make ARGS` in the repository; its output; fails the test on a non-zero exit."""
        proc = subprocess.run(
            ["make", "--no-print-directory", *args],
            cwd=REPO,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, (
            f"make {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}"
        )
        return out

    def bash(self, script: str, env: dict[str, str] | None = None) -> list[str]:
        """A README block run by bash as written (after `readme_text`), each curl failing on an
        HTTP error; the output of each curl, in order."""
        prelude = (
            "set -euo pipefail\n"
            f"curl() {{ command curl --fail-with-body \"$@\"; printf '\\n%s\\n' '{SEP}'; }}\n"
        )
        proc = subprocess.run(
            ["bash", "-c", prelude + script],
            cwd=REPO,
            env=env or self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, (
            f"README block failed ({proc.returncode}):\n{script}\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}\n{self.logs()}"
        )
        return [chunk.strip() for chunk in proc.stdout.split(SEP)[:-1]]

    def logs(self) -> str:
        parts = []
        for log in sorted(self.run_dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in self.run_dir.glob("*.pid")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening(port: int) -> bool:
    proc = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    return bool(proc.stdout.strip())


@pytest.fixture
def quickstart() -> Iterator[Quickstart]:
    q = Quickstart(LOCAL)
    subprocess.run(["rm", "-rf", str(LOCAL)], check=True)
    try:
        yield q
    finally:
        # whatever the test left running: its app processes, then its servers
        for pid in q.pids().values():
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        subprocess.run(
            ["bash", str(SERVERS_SH), "stop", "all"],
            env=q.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=180,
            check=False,
        )
        subprocess.run(["rm", "-rf", str(LOCAL)], check=False)


def readme_text(text: str, q: Quickstart, artifact: dict[str, Any]) -> str:
    """What a reader changes in a README block: the API's port, the placeholders."""
    text = text.replace("127.0.0.1:4200", f"127.0.0.1:{q.ports['api']}")
    text = text.replace("<artifact-id>", artifact["id"]).replace("<key>", artifact["key"])
    assert not re.search(r"<[a-z-]+>", text), f"a placeholder this test does not fill:\n{text}"
    return text


def _json(chunk: str) -> Any:
    try:
        return orjson.loads(chunk)
    except orjson.JSONDecodeError:
        pytest.fail(f"not JSON: {chunk[:500]}")


def _wait_count(api: str, want: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    got = -1
    while time.monotonic() < deadline:
        got = httpx.post(f"{api}/api/artifacts/count", json={}, timeout=10).json()
        if got == want:
            break
        time.sleep(0.5)
    return int(got)


def test_the_readme_quickstart_runs_as_written(quickstart: Quickstart) -> None:
    q = quickstart
    readme = dict(blocks())

    # `make up DEMO=0`: servers, topics and indices, the three processes, ready when it returns
    out = q.make("up", "DEMO=0")
    assert f"API ready on http://127.0.0.1:{q.ports['api']}/api" in out, out[-2000:]
    assert set(q.pids()) == {"api", "indexer", "alerts"}, q.pids()
    assert httpx.get(f"{q.api}/api/ready", timeout=10).status_code == 200
    # no demo data with DEMO=0 (the bootstrap made the indices: the count answers)
    assert httpx.post(f"{q.api}/api/artifacts/count", json={}, timeout=10).json() == 0

    # `make up` again: what runs is left alone, the demo dataset is published and indexed
    pids = q.pids()
    out = q.make("up")
    assert q.pids() == pids and all(_alive(p) for p in pids.values()), out[-2000:]
    assert len(re.findall(r"^(api|indexer|alerts): already running", out, re.M)) == 3, out
    dataset = generate_dataset(DEMO_SEED, DatasetScale.for_artifacts(DEMO_ARTIFACTS))
    want = len(dataset.artifacts)
    assert _wait_count(q.api, want, 180) == want, q.logs()
    artifact = next(a for a in dataset.artifacts if a["key"])

    # every curl block of the README, as written
    curl_blocks = [
        (line, text)
        for line, text in readme.items()
        if re.search(r"^\s*curl ", text, re.M) and "artifact-search" not in text
    ]
    assert len(curl_blocks) >= 5, curl_blocks
    outputs: dict[int, list[str]] = {}
    for line, text in curl_blocks:
        outputs[line] = q.bash(readme_text(text, q, artifact))
        assert len(outputs[line]) == len(re.findall(r"(?:^|;)\s*curl ", text, re.M)), text
    by_first_url = {
        re.search(r"127\.0\.0\.1:4200(\S*)", text).group(1): outputs[line]  # type: ignore[union-attr]
        for line, text in curl_blocks
    }
    # the first example: the 5 newest markdown artifacts, as Prefect orders them
    first = _json(by_first_url["/api/artifacts/filter"][0])
    markdown = sorted(a["created"] for a in dataset.artifacts if a["type"] == "markdown")
    assert [a["type"] for a in first] == ["markdown"] * 5
    assert [a["created"] for a in first] == markdown[::-1][:5]
    # the worked examples answer JSON (counts, lists, one artifact, health)
    endpoints = by_first_url["/api"]
    assert len(endpoints) == 8
    assert _json(endpoints[1]) == sum(1 for a in dataset.artifacts if a["key"] is not None)
    assert _json(endpoints[4])["id"] == artifact["id"]
    assert _json(endpoints[5])["key"] == artifact["key"]
    # full text within a Prefect filter finds demo artifacts, with the facet asked for
    words, typed = (_json(c) for c in by_first_url["/ext/v1/artifacts/search"])
    assert words["hits"] and sum(b["count"] for b in words["facets"]["type"]) >= len(words["hits"])
    assert isinstance(typed["hits"], list), typed
    saved = by_first_url["/ext/v1/saved-searches"]
    assert _json(saved[0])["name"] == "failed revenue"
    assert [s["name"] for s in _json(saved[1])["saved_searches"]] == ["failed revenue"]
    traced = by_first_url["/api/artifacts/count"]
    assert re.search(r"^x-request-id: support-ticket-42\s*$", traced[0], re.I | re.M), traced

    # the credentials example: the API started as the README shows, the curl with -u
    (line, text) = next((ln, t) for ln, t in readme.items() if "QUERY_AUTH_STRING=" in t)
    match = re.search(r"^QUERY_AUTH_STRING='([^']+)' artifact-search api$", text, re.M)
    assert match, text
    auth_port = free_port()
    auth_env = q.env(
        QUERY_AUTH_STRING=match.group(1),
        QUERY_PORT=str(auth_port),
        ELASTICSEARCH_URL=f"http://127.0.0.1:{q.ports['es']}",
    )
    log = (LOCAL / "auth-api.log").open("wb")
    api = subprocess.Popen(
        ["artifact-search", "api"],
        cwd=REPO,
        env=auth_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(auth_port) and time.monotonic() < deadline and api.poll() is None:
            time.sleep(0.2)
        assert _listening(auth_port), (LOCAL / "auth-api.log").read_text(errors="replace")
        curls = "\n".join(ln for ln in text.splitlines() if ln.startswith("curl "))
        curls = curls.replace("127.0.0.1:4200", f"127.0.0.1:{auth_port}")
        (answer,) = q.bash(curls, env=auth_env)
        assert _json(answer) == want
        anonymous = httpx.post(f"http://127.0.0.1:{auth_port}/api/artifacts/count", json={})
        assert anonymous.status_code == 401
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
        log.close()

    # `make status`: one line per server and process
    status = q.make("status")
    for name in ("kafka", "es", "api", "indexer", "alerts"):
        assert re.search(rf"^{name}\s+running", status, re.M), status

    # `make down`: the processes and the servers stop
    pids = q.pids()
    q.make("down")
    assert not any(_alive(p) for p in pids.values()), pids
    assert not q.pids()
    for name in ("kafka", "es", "api"):
        assert not _listening(q.ports[name]), f"{name} still listens after make down"

    # `make reset`: also wipes the servers' data and the indexer's state
    assert (LOCAL / "kafka" / "data").exists() and (LOCAL / "indexer-state").exists()
    q.make("reset")
    for gone in ("kafka/data", "es/data", "indexer-state", "run"):
        assert not (LOCAL / gone).exists(), f"{gone} survived make reset"

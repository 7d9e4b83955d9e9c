"""Root conftest: markers by folder and the session-wide server fixtures.

Every test folder gets its marker automatically (tests/unit -> ``unit``, tests/integration ->
``integration``, ...), so ``pytest -m unit`` runs without any server.

The server fixtures are lazy: only a test that asks for one causes it to be resolved, in
this order:

1. the environment: ``KAFKA_BOOTSTRAP_SERVERS``, ``ELASTICSEARCH_URL``, ``POSTGRES_DSN``
   (``make test`` and ``.ci/run`` set these);
2. testcontainers, when a Docker engine answers a ping;
3. the local servers: ``deploy/local/servers.sh start <target>`` (once per session; servers
   that this session started are stopped at its end unless ``KEEP_LOCAL_SERVERS=1``).

If none works the test fails with a message saying what to install; it is never skipped.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
SERVERS_SH = REPO_ROOT / "deploy" / "local" / "servers.sh"

FOLDER_MARKERS = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "conformance": "conformance",
    "faults": "faults",
    "reliability": "reliability",
    "ops": "integration",
    "routing": "e2e",
    "sync": "sync",
    "containers": "containers",
    "compose": "containers",
}

# where deploy/local/servers.sh puts them (it honours the same port variables)
LOCAL_DEFAULTS = {
    "kafka": f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}",
    "es": f"http://127.0.0.1:{os.environ.get('ES_PORT', '9200')}",
    "pg": f"postgresql://postgres@127.0.0.1:{os.environ.get('PG_PORT', '55432')}/postgres",
}

INSTALL_HINT = (
    "Tests that need servers use, in order: the env vars KAFKA_BOOTSTRAP_SERVERS / "
    "ELASTICSEARCH_URL / POSTGRES_DSN, a Docker engine (testcontainers), or the local servers "
    "started by deploy/local/servers.sh. For the latter install Java 17+ (Kafka), a JDK 21+ "
    "(Elasticsearch; or set ES_JAVA_HOME), Maven (downloads Kafka and Elasticsearch) and "
    "PostgreSQL server binaries, e.g. on Debian: apt-get install openjdk-17-jdk-headless maven "
    "postgresql curl unzip. `make servers` starts them all."
)


# --------------------------------------------------------------------------------------------
# markers by folder
# --------------------------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(TESTS_DIR)
        except ValueError:
            continue
        marker = FOLDER_MARKERS.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


# --------------------------------------------------------------------------------------------
# server resolution
# --------------------------------------------------------------------------------------------
def _docker_available() -> bool:
    if os.environ.get("TESTS_NO_DOCKER") == "1":
        return False
    try:
        import docker  # type: ignore[import-untyped]  # comes with testcontainers

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class _Servers:
    """Resolves each server once per session and remembers what it has to tear down."""

    def __init__(self) -> None:
        self._docker: bool | None = None
        self._cleanups: list[Callable[[], None]] = []

    @property
    def docker(self) -> bool:
        if self._docker is None:
            self._docker = _docker_available()
        return self._docker

    def close(self) -> None:
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # teardown must not hide test results
                print(f"[conftest] cleanup failed: {exc!r}")

    # -- local servers ------------------------------------------------------------------------
    def local(self, target: str) -> str:
        if not SERVERS_SH.exists():
            pytest.fail(f"{SERVERS_SH} is missing. {INSTALL_HINT}", pytrace=False)
        was_running = (
            subprocess.run(
                ["bash", str(SERVERS_SH), "status", target],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        proc = subprocess.run(
            ["bash", str(SERVERS_SH), "start", target],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"could not start the local {target} server with {SERVERS_SH} start {target} "
                f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}\n{INSTALL_HINT}",
                pytrace=False,
            )
        if not was_running and os.environ.get("KEEP_LOCAL_SERVERS") != "1":

            def stop() -> None:
                subprocess.run(
                    ["bash", str(SERVERS_SH), "stop", target], capture_output=True, check=False
                )

            self._cleanups.append(stop)
        return LOCAL_DEFAULTS[target]

    # -- containers ---------------------------------------------------------------------------
    def _container(self, factory: Callable[[], Any]) -> Any:
        container = factory()
        container.start()
        self._cleanups.append(container.stop)
        return container

    def kafka(self) -> str:
        if value := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            return value
        if self.docker:
            try:
                from testcontainers.community.kafka import KafkaContainer
            except ImportError:  # older testcontainers layout
                from testcontainers.kafka import KafkaContainer

            container = self._container(lambda: KafkaContainer().with_kraft())
            return str(container.get_bootstrap_server())
        return self.local("kafka")

    def elasticsearch(self) -> str:
        if value := os.environ.get("ELASTICSEARCH_URL"):
            return value
        if self.docker:
            try:
                from testcontainers.community.elasticsearch import ElasticSearchContainer
            except ImportError:
                from testcontainers.elasticsearch import ElasticSearchContainer

            version = os.environ.get("ES_VERSION", "9.2.4")
            container = self._container(
                lambda: (
                    ElasticSearchContainer(f"elasticsearch:{version}", mem_limit="2g")
                    .with_env("ES_JAVA_OPTS", "-Xms1g -Xmx1g")
                    .with_env("action.destructive_requires_name", "false")
                    .with_env("cluster.routing.allocation.disk.threshold_enabled", "false")
                )
            )
            return str(container.get_url())
        return self.local("es")

    def postgres(self) -> str:
        if value := os.environ.get("POSTGRES_DSN"):
            return value
        if self.docker:
            try:
                from testcontainers.community.postgres import PostgresContainer
            except ImportError:
                from testcontainers.postgres import PostgresContainer

            container = self._container(
                lambda: (
                    PostgresContainer("postgres:15", driver=None)
                    .with_env("POSTGRES_INITDB_ARGS", "--locale=C --encoding=UTF8")
                    .with_command(
                        "postgres -c wal_level=logical -c max_replication_slots=20 "
                        "-c max_wal_senders=20"
                    )
                )
            )
            return str(container.get_connection_url(driver=None))
        return self.local("pg")


@pytest.fixture(scope="session")
def _servers() -> Iterator[_Servers]:
    servers = _Servers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(_servers: _Servers) -> str:
    """Kafka bootstrap servers, e.g. ``127.0.0.1:9092``."""
    return _servers.kafka()


@pytest.fixture(scope="session")
def elasticsearch_url(_servers: _Servers) -> str:
    """Elasticsearch base URL, e.g. ``http://127.0.0.1:9200``."""
    return _servers.elasticsearch()


@pytest.fixture(scope="session")
def postgres_dsn(_servers: _Servers) -> str:
    """libpq-style DSN of a PostgreSQL 15 server whose databases use the C collation (and
    wal_level=logical, for tests/sync)."""
    return _servers.postgres()


@pytest.fixture(autouse=True)
def _indexer_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's in-process indexers keep their state store in the test's own directory
    (a test running several replicas gives each its own `state_dir`)."""
    monkeypatch.setenv("INDEXER_STATE_DIR", str(tmp_path / "indexer-state"))


@pytest.fixture
def unique_name() -> str:
    """A short unique lowercase name for topics, indices and groups, like ``t-1a2b3c4d``."""
    return f"t-{uuid.uuid4().hex[:8]}"

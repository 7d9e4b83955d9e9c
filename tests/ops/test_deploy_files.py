"""Dockerfile, .dockerignore and deploy/compose.yaml: static checks (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from artifact_search.cli import subcommand_flags

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    return data


def _stages(dockerfile: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for raw in re.sub(r"\\\n", " ", dockerfile).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:  # ARGs before the first FROM belong to no stage
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_non_root_without_build_tools() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) >= 2
    # the base is a build argument whose default is the public Python image
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.MULTILINE)
    assert all(stage[0].split()[1] == "${BASE}" for stage in stages)
    final = stages[-1]
    text = "\n".join(final)
    assert "build-essential" not in text and "gcc" not in text and "apt-get install" not in text
    assert any(line.startswith("COPY --from=") for line in final)
    users = [line for line in final if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] == "10001"
    assert 'ENTRYPOINT ["artifact-search"]' in final
    # every dependency installs from a binary wheel: no compiler, no apt in any stage
    assert "build-essential" not in text and "apt-get" not in text
    # the indexer's state store has a writable home on a read-only root filesystem
    assert "INDEXER_STATE_DIR=/var/lib/indexer/state" in text


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "requirements/runtime.txt",
        "requirements/build.txt",
        "artifact_search",
        "services",
        "indexer",
        "query",
        "alerts",
        "deploy/docker/wheelhouse",
    }


def test_compose_services_commands_ports_and_order() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "elasticsearch",
        "bootstrap",
        "indexer",
        "api",
        "alerts",
        "sync-prefect",
        "sync-prefect-api",
    }
    es_env = services["elasticsearch"]["environment"]
    assert es_env["discovery.type"] == "single-node"
    assert es_env["xpack.security.enabled"] == "false"
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka_env
    subcommands = set(subcommand_flags())
    sync = services["sync-prefect"]
    assert sync["command"][0] == "sync-prefect" and sync["profiles"] == ["sync"]
    assert sync["volumes"][0].split(":")[0] in compose["volumes"]
    api_sync = services["sync-prefect-api"]
    assert api_sync["command"][0] == "sync-prefect" and api_sync["profiles"] == ["sync-api"]
    assert api_sync["volumes"][0].split(":")[0] in compose["volumes"]
    assert set(api_sync["environment"]) >= {"SYNC_API_URL", "SYNC_API_KEY"}
    for name in ("bootstrap", "indexer", "api", "alerts"):
        service = services[name]
        assert service["command"][0] in subcommands
        assert service["command"][0] == name
        assert service["user"] == "10001:10001"
        assert service["read_only"] is True
        assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert service["environment"]["ELASTICSEARCH_URL"] == "http://elasticsearch:9200"
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (REPO / "deploy" / service["build"]["context"] / "Dockerfile").exists()
    assert services["bootstrap"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "elasticsearch": {"condition": "service_healthy"},
    }
    for name in ("indexer", "api", "alerts"):
        assert services[name]["depends_on"]["bootstrap"] == {
            "condition": "service_completed_successfully"
        }
        assert "healthcheck" in services[name]
    assert services["api"]["ports"] == ["127.0.0.1:${API_HOST_PORT:-4200}:4200"]
    assert services["api"]["command"][-2:] == ["--port", "4200"]
    assert services["indexer"]["environment"]["INDEXER_METRICS_PORT"] == "9464"
    assert services["indexer"]["ports"] == ["127.0.0.1:${METRICS_HOST_PORT:-9464}:9464"]
    assert "/livez" in " ".join(services["indexer"]["healthcheck"]["test"])
    # the state store on a named volume (the root filesystem is read-only)
    state = services["indexer"]["environment"]["INDEXER_STATE_DIR"]
    (mount,) = services["indexer"]["volumes"]
    volume, path = mount.split(":")
    assert state.startswith(path + "/") and volume in compose["volumes"]
    assert "/api/ready" in " ".join(services["api"]["healthcheck"]["test"])
    # the alerts worker evaluates the indexer's change feed; host ports never collide
    assert services["indexer"]["environment"]["INDEXER_PUBLISH_CHANGES"] == "true"
    assert "/livez" in " ".join(services["alerts"]["healthcheck"]["test"])
    host_ports = [  # "127.0.0.1:${VAR:-9467}:9465" -> 9467, the default host port
        re.sub(r"\$\{\w+:-(\d+)\}", r"\1", port).split(":")[1]
        for service in services.values()
        for port in service.get("ports", [])
    ]
    assert len(host_ports) == len(set(host_ports)), host_ports
    # public images by default; KAFKA_IMAGE / ES_IMAGE / BASE_IMAGE select images built here
    assert services["elasticsearch"]["image"] == "${ES_IMAGE:-elasticsearch:9.2.4}"
    assert services["kafka"]["image"] == "${KAFKA_IMAGE:-apache/kafka:4.1.0}"
    assert services["api"]["build"]["args"] == {"BASE": "${BASE_IMAGE:-python:3.11-slim}"}
    # the health checks need nothing that only one of the two kinds of images has (curl)
    assert "curl" not in str(services["elasticsearch"]["healthcheck"]["test"])

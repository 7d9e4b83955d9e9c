"""The Helm chart (deploy/helm/artifact-search): generated from the kustomize manifests,
linted by `helm lint --strict` and kube-score, and rendering the same objects as kustomize,
with the values reaching what they name (image, configuration, replicas, optional parts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.ops.k8s_tools import Obj, go_tool, kube_score, kustomize_build

HELM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm"
CHART = HELM_DIR / "artifact-search"
ALL_ON = [
    "--set",
    "monitoring.enabled=true",
    "--set",
    "grafana.dashboard.enabled=true",
]
WORKLOADS = ("Deployment", "StatefulSet")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [go_tool("helm"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(*sets: str) -> list[Obj]:
    """`helm template` of the chart, as objects."""
    proc = helm("template", "search", str(CHART), "--namespace", "search", *sets)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_key(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def pod_spec(obj: Obj) -> Obj:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def images(objs: list[Obj]) -> set[str]:
    return {
        c["image"]
        for o in objs
        if o["kind"] in (*WORKLOADS, "CronJob")
        for c in [*pod_spec(o).get("initContainers", []), *pod_spec(o)["containers"]]
    }


def checksums(objs: list[Obj]) -> dict[str, str]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        for o in objs
        if o["kind"] in WORKLOADS
    }


def test_the_checked_in_chart_is_what_the_manifests_generate(tmp_path: Path) -> None:
    out = tmp_path / "chart"
    proc = subprocess.run(
        [
            sys.executable,
            str(HELM_DIR / "generate_chart.py"),
            "--out",
            str(out),
            "--kustomize",
            go_tool("kustomize"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    want = {p.relative_to(out): p.read_text() for p in out.rglob("*") if p.is_file()}
    have = {p.relative_to(CHART): p.read_text() for p in CHART.rglob("*") if p.is_file()}
    assert sorted(have) == sorted(want), "the chart's files differ: run `make helm-chart`"
    stale = [str(path) for path in want if have[path] != want[path]]
    assert not stale, f"stale chart files (run `make helm-chart`): {stale}"
    assert len(want) > 30


@pytest.mark.parametrize("sets", [[], ALL_ON, ["--set", "oneUrl.enabled=false"]])
def test_helm_lint_strict_passes(sets: list[str]) -> None:
    proc = helm("lint", "--strict", str(CHART), *sets)
    assert proc.returncode == 0 and "0 chart(s) failed" in proc.stdout, proc.stdout + proc.stderr


def test_the_default_render_is_the_kustomize_base() -> None:
    """With every optional part on, the chart renders exactly what kustomize renders from the
    same manifests, but for what Helm does its own way (the configuration's checksum on the
    pod templates instead of a hashed ConfigMap name)."""
    helm_objs = by_key(render(*ALL_ON))
    for obj in helm_objs.values():
        if obj["kind"] in WORKLOADS:
            annotations = obj["spec"]["template"]["metadata"]["annotations"]
            assert len(annotations.pop("checksum/config")) == 64
            if not annotations:
                del obj["spec"]["template"]["metadata"]["annotations"]
    text = yaml.safe_dump_all(kustomize_build(HELM_DIR / "source"))
    hashed = next(
        line.split()[-1] for line in text.splitlines() if "name: artifact-search-config-" in line
    )
    kustomize_objs = by_key(
        list(yaml.safe_load_all(text.replace(hashed, "artifact-search-config")))
    )
    assert sorted(helm_objs) == sorted(kustomize_objs)
    differ = [key for key in helm_objs if helm_objs[key] != kustomize_objs[key]]
    assert not differ, differ


def test_optional_parts_follow_their_values() -> None:
    default = {kind for kind, _ in by_key(render())}
    assert "Ingress" in default
    assert not default & {"ServiceMonitor", "PrometheusRule"}
    assert ("ConfigMap", "artifact-search-grafana-dashboard") not in by_key(render())
    on = by_key(render(*ALL_ON))
    assert {"ServiceMonitor", "PrometheusRule"} <= {kind for kind, _ in on}
    # Prometheus' and Grafana's own `{{ }}` templates survive Helm's templating
    rule = yaml.safe_dump(on[("PrometheusRule", "artifact-search")])
    assert "{{ $labels.topic }}" in rule
    off = by_key(render("--set", "oneUrl.enabled=false"))
    assert ("Ingress", "artifact-search") not in off and ("Service", "prefect-server") not in off


def test_values_reach_every_object_they_name() -> None:
    objs = render(
        *ALL_ON,
        *("--set", "image.repository=registry.example/artifact-search"),
        *("--set", "image.tag=9.9.9"),
        *("--set", "indexer.replicas=12"),
        *("--set", "alerts.resources.limits.memory=1Gi"),
        *("--set", "query.autoscaling.maxReplicas=40"),
        *("--set", "config.LOG_LEVEL=DEBUG"),
        *("--set", "config.KAFKA_PARTITIONS=12"),
        *("--set", "oneUrl.prefectServer=prefect.elsewhere.svc.cluster.local"),
    )
    keyed = by_key(objs)
    assert images(objs) == {"registry.example/artifact-search:9.9.9"}
    assert keyed[("StatefulSet", "artifact-search-indexer")]["spec"]["replicas"] == 12
    alerts = pod_spec(keyed[("Deployment", "artifact-search-alerts")])["containers"][0]
    assert alerts["resources"]["limits"]["memory"] == "1Gi"
    assert keyed[("HorizontalPodAutoscaler", "artifact-search-query")]["spec"]["maxReplicas"] == 40
    config = keyed[("ConfigMap", "artifact-search-config")]["data"]
    assert config["LOG_LEVEL"] == "DEBUG" and config["KAFKA_PARTITIONS"] == "12"
    assert all(isinstance(v, str) for v in config.values())  # a ConfigMap holds strings only
    prefect = keyed[("Service", "prefect-server")]["spec"]["externalName"]
    assert prefect == "prefect.elsewhere.svc.cluster.local"
    # the default image is the chart's appVersion
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert images(render()) == {f"artifact-search:{app_version}"}


def test_an_upgrade_rolls_the_pods_on_a_configuration_change_only_when_it_changes() -> None:
    """A new configuration changes every workload's pod template (its checksum), so `helm
    upgrade` rolls them; the same configuration keeps it, so an image-only upgrade rolls the
    pods through the image alone; a scale change touches neither."""
    before = render()
    config_changed = render("--set", "config.LOG_LEVEL=DEBUG")
    image_changed = render("--set", "image.tag=0.2.0", "--set", "indexer.replicas=6")
    assert set(checksums(before)) == {
        "artifact-search-alerts",
        "artifact-search-query",
        "artifact-search-indexer",
        "artifact-search-sync-prefect",
    }
    for name, checksum in checksums(config_changed).items():
        assert checksum != checksums(before)[name]
    assert checksums(image_changed) == checksums(before)
    assert not [o for o in before if o["kind"] == "Job"]  # nothing immutable to fail an upgrade
    # the HPA owns the query API's scale: no `replicas` that every upgrade would reset
    query = by_key(image_changed)[("Deployment", "artifact-search-query")]
    assert "replicas" not in query["spec"]


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_every_rendered_object_validates_against_the_schemas(version: str) -> None:
    checked = 0
    for obj in render("--set", "grafana.dashboard.enabled=true"):
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 25


def test_kube_score_passes_on_the_chart(tmp_path: Path) -> None:
    result = kube_score(render(), tmp_path)
    problems: list[Any] = [
        line for line in result.stdout.splitlines() if line.startswith(("[CRITICAL]", "[WARNING]"))
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    assert "artifact-search-indexer" in result.stdout and "[OK]" in result.stdout

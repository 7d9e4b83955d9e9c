"""deploy/k8s: every overlay renders, validates against the Kubernetes schemas, and keeps
the operational invariants (non-root, probes, resources, replicas <= partitions, PDBs...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.ops.kustomize import Obj, render

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
K8S_VERSIONS = ("1.30.0", "1.33.0")
CRDS = {"ServiceMonitor"}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(K8S / "overlays" / request.param)


def _one(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def _pod_spec(obj: Obj) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        obj = obj["spec"]["jobTemplate"]
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob")]


def _config(objs: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = _one(objs, "ConfigMap", "artifact-search-config")["data"]
    return data


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_schemas(
    rendered: tuple[str, list[Obj]], version: str
) -> None:
    _, objs = rendered
    checked = 0
    for obj in objs:
        if obj["kind"] in CRDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 14


def test_expected_objects_and_namespace(rendered: tuple[str, list[Obj]]) -> None:
    overlay, objs = rendered
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for want in [
        ("StatefulSet", "artifact-search-indexer"),
        ("Deployment", "artifact-search-query"),
        ("Service", "artifact-search-query"),
        ("HorizontalPodAutoscaler", "artifact-search-query"),
        ("PodDisruptionBudget", "artifact-search-query"),
        ("PodDisruptionBudget", "artifact-search-indexer"),
        ("CronJob", "artifact-search-replay"),
        ("ConfigMap", "artifact-search-config"),
        ("NetworkPolicy", "artifact-search-default"),
    ]:
        assert want in kinds
    namespace = "artifact-search-dev" if overlay == "dev" else "artifact-search"
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {namespace}
    assert ("Namespace", namespace) in kinds  # `kubectl apply -k` creates it too
    assert all(
        o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "prefect-artifact-search"
        for o in objs
    )
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    assert bool(monitors) == (overlay == "prod")
    for monitor in monitors:
        services = [
            s
            for s in objs
            if s["kind"] == "Service"
            and _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_pods_are_locked_down(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    for obj in _workloads(objs):
        pod = _pod_spec(obj)
        name = obj["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            res = container["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), name
            assert "memory" in res["limits"], name
            assert ":" in container["image"] and not container["image"].endswith(":latest")
            refs = {next(iter(k for k in e if k.endswith("Ref"))): e for e in container["envFrom"]}
            assert refs["configMapRef"]["configMapRef"]["name"] == "artifact-search-config"
            assert refs["secretRef"]["secretRef"]["name"] == "artifact-search-secrets"


def test_long_running_pods_have_probes_and_spread(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    expected_paths = {
        ("Deployment", "artifact-search-query"): ("/api/health", "/api/ready"),
        ("StatefulSet", "artifact-search-indexer"): ("/livez", "/readyz"),
    }
    for (kind, name), (live, ready) in expected_paths.items():
        dep = _one(objs, kind, name)
        pod = _pod_spec(dep)
        (container,) = pod["containers"]
        assert container["startupProbe"]["httpGet"]["path"] == live
        assert container["livenessProbe"]["httpGet"]["path"] == live
        assert container["readinessProbe"]["httpGet"]["path"] == ready
        ports = {p["name"] for p in container["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in pod["topologySpreadConstraints"]:
            assert _selects(constraint["labelSelector"], pod_labels(dep))


def pod_labels(dep: Obj) -> dict[str, str]:
    labels: dict[str, str] = dep["spec"]["template"]["metadata"]["labels"]
    return labels


def test_indexer_replicas_partitions_grace_and_pdb(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    config = _config(objs)
    dep = _one(objs, "StatefulSet", "artifact-search-indexer")
    replicas = dep["spec"]["replicas"]
    assert 1 <= replicas <= int(config["KAFKA_PARTITIONS"])
    assert dep["spec"]["updateStrategy"]["type"] == "RollingUpdate"  # one pod at a time
    # a batch gets its retries (up to INDEXER_RETRY_MAX_S each) and a minute of work
    grace = _pod_spec(dep)["terminationGracePeriodSeconds"]
    assert grace >= 60 + 2 * float(config["INDEXER_RETRY_MAX_S"])
    pdb = _one(objs, "PodDisruptionBudget", "artifact-search-indexer")
    assert _selects(pdb["spec"]["selector"], pod_labels(dep))
    assert pdb["spec"].get("maxUnavailable", 0) >= 1 or pdb["spec"]["minAvailable"] < replicas
    assert _selects(dep["spec"]["selector"], pod_labels(dep))


def test_indexer_keeps_its_state_on_a_volume_per_replica(
    rendered: tuple[str, list[Obj]],
) -> None:
    """The state store lives on the pod's own claim; the pod name is the instance id and
    the static member id, so a restart resumes from the same state and partitions."""
    _, objs = rendered
    sts = _one(objs, "StatefulSet", "artifact-search-indexer")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = _pod_spec(sts)["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e for e in container["env"]}
    assert env["INDEXER_STATE_DIR"]["value"].startswith(mounts[claim["metadata"]["name"]] + "/")
    assert env["INDEXER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["INDEXER_STATIC_MEMBERSHIP"]["value"] == "true"
    assert sts["spec"]["serviceName"] == "artifact-search-indexer-metrics"
    assert _one(objs, "Service", "artifact-search-indexer-metrics")["spec"]["clusterIP"] == "None"


def test_query_service_hpa_and_pdb(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    dep = _one(objs, "Deployment", "artifact-search-query")
    svc = _one(objs, "Service", "artifact-search-query")
    assert _selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(dep))
    (container,) = _pod_spec(dep)["containers"]
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    hpa = _one(objs, "HorizontalPodAutoscaler", "artifact-search-query")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # the HPA owns the count: a `replicas` here would reset the scale on every apply
    assert "replicas" not in dep["spec"]
    (container,) = _pod_spec(dep)["containers"]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pdb = _one(objs, "PodDisruptionBudget", "artifact-search-query")
    assert _selects(pdb["spec"]["selector"], pod_labels(dep))
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_bootstrap_runs_on_every_start_and_replay_is_a_template(
    rendered: tuple[str, list[Obj]],
) -> None:
    _, objs = rendered
    sts = _one(objs, "StatefulSet", "artifact-search-indexer")
    (init,) = _pod_spec(sts)["initContainers"]
    assert init["args"] == ["bootstrap"]  # re-runs on upgrades, unlike a one-shot Job
    assert not [o for o in objs if o["kind"] == "Job"]  # nothing immutable to re-apply
    replay = _one(objs, "CronJob", "artifact-search-replay")
    assert _pod_spec(replay)["containers"][0]["args"] == ["replay"]
    # applying the manifests must never start a replay by itself
    assert replay["spec"]["suspend"] is True
    mounts = {m["mountPath"] for m in _pod_spec(replay)["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts  # its throwaway state store, on a read-only root filesystem


def test_an_upgrade_changes_only_what_kubernetes_lets_change(tmp_path: Path) -> None:
    """Render prod, then prod with another image tag, more replicas and another config:
    every object keeps its kind and name, and the fields Kubernetes refuses to change on
    an existing object (StatefulSet selector, service name and volume claims; Deployment
    selector) are identical."""
    before = {(o["kind"], o["metadata"]["name"]): o for o in render(K8S / "overlays" / "prod")}
    overlay = tmp_path / "upgrade"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "resources:\n"
        f"  - {K8S / 'overlays' / 'prod'}\n"
        "images:\n"
        "  - name: artifact-search\n"
        "    newTag: 0.2.0\n"
        "patches:\n"
        "  - path: patch.yaml\n"
    )
    (overlay / "patch.yaml").write_text(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: artifact-search-indexer\n"
        "spec:\n  replicas: 9\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: artifact-search-config\n"
        "data:\n  LOG_LEVEL: DEBUG\n"
    )
    after = {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}
    assert set(after) == set(before)
    old, new = (
        before[("StatefulSet", "artifact-search-indexer")],
        after[("StatefulSet", "artifact-search-indexer")],
    )
    for field in ("selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"):
        assert old["spec"][field] == new["spec"][field], field
    assert new["spec"]["replicas"] == 9
    images = {c["image"] for c in _pod_spec(new)["containers"] + _pod_spec(new)["initContainers"]}
    assert images == {"artifact-search:0.2.0"}
    query = ("Deployment", "artifact-search-query")
    assert before[query]["spec"]["selector"] == after[query]["spec"]["selector"]
    assert after[("ConfigMap", "artifact-search-config")]["data"]["LOG_LEVEL"] == "DEBUG"


def test_network_policies(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    default = _one(objs, "NetworkPolicy", "artifact-search-default")
    assert set(default["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in default["spec"]
    egress_ports = {p["port"] for rule in default["spec"]["egress"] for p in rule["ports"]}
    assert {53, 9092, 9200, 5432} <= egress_ports
    query = _one(objs, "NetworkPolicy", "artifact-search-query-ingress")
    assert {p["port"] for r in query["spec"]["ingress"] for p in r["ports"]} == {4200}


def test_renderer_rejects_what_it_does_not_understand(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator: []\n")
    with pytest.raises(NotImplementedError):
        render(tmp_path)


def test_schema_validation_catches_a_broken_object(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    broken = _one(objs, "Deployment", "artifact-search-query")
    broken = {**broken, "spec": {**broken["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)

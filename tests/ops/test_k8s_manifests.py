"""deploy/k8s: every overlay renders with kustomize, validates against the Kubernetes
schemas and keeps the operational invariants (non-root, probes on the routes the code
serves, resources, replicas <= partitions, PDBs, network policies, the one-URL Ingress);
an upgrade (image, scale, config) changes only what Kubernetes lets change and rolls
the pods that read the config. kube-score lints the rendered overlays
(test_k8s_lint.py)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from query.app import create_app
from services.config import ElasticsearchSettings, QuerySettings, SyncSettings
from services.health import HealthServer
from tests.ops.k8s_tools import Obj, kustomize_build

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
K8S_VERSIONS = ("1.30.0", "1.33.0")
CRDS = {"ServiceMonitor", "PrometheusRule"}
CONFIG = "artifact-search-config"
WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, kustomize_build(K8S / "overlays" / request.param)


def _one(objs: list[Obj], kind: str, name: str) -> Obj:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def _pod_spec(obj: Obj) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        obj = obj["spec"]["jobTemplate"]
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _containers(obj: Obj) -> list[dict[str, Any]]:
    pod = _pod_spec(obj)
    return [*pod["containers"], *pod.get("initContainers", [])]


def _workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOADS]


def _config_map(objs: list[Obj]) -> Obj:
    """The generated ConfigMap: its name is the base name plus a hash of its content."""
    (config,) = [
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(CONFIG)
    ]
    return config


def _config(objs: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = _config_map(objs)["data"]
    return data


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def pod_labels(dep: Obj) -> dict[str, str]:
    if dep["kind"] == "CronJob":
        dep = dep["spec"]["jobTemplate"]
    labels: dict[str, str] = dep["spec"]["template"]["metadata"]["labels"]
    return labels


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
    assert checked >= 17


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
        ("CronJob", "artifact-search-backfill-prefect"),
        ("NetworkPolicy", "artifact-search-default"),
        ("NetworkPolicy", "artifact-search-backfill-egress"),
        ("Ingress", "artifact-search"),
        ("Service", "prefect-server"),
        ("Deployment", "artifact-search-alerts"),
        ("PodDisruptionBudget", "artifact-search-alerts"),
        ("NetworkPolicy", "artifact-search-alerts-webhooks"),
        ("StatefulSet", "artifact-search-sync-prefect"),
        ("NetworkPolicy", "artifact-search-sync-prefect-egress"),
    ]:
        assert want in kinds
    assert _config_map(objs)["metadata"]["name"] != CONFIG  # generated, with a hash suffix
    namespace = "artifact-search-dev" if overlay == "dev" else "artifact-search"
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {namespace}
    assert ("Namespace", namespace) in kinds  # `kubectl apply -k` creates it too
    assert all(
        o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "prefect-artifact-search"
        for o in objs
    )


def test_pods_are_locked_down(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    config_name = _config_map(objs)["metadata"]["name"]
    for obj in _workloads(objs):
        pod = _pod_spec(obj)
        name = obj["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in _containers(obj):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            res = container["resources"]
            assert {"cpu", "memory", "ephemeral-storage"} <= set(res["requests"]), name
            assert {"memory", "ephemeral-storage"} <= set(res["limits"]), name
            assert ":" in container["image"] and not container["image"].endswith(":latest")
            refs = {next(iter(k for k in e if k.endswith("Ref"))): e for e in container["envFrom"]}
            assert refs["configMapRef"]["configMapRef"]["name"] == config_name, name
            assert refs["secretRef"]["secretRef"]["name"] == "artifact-search-secrets"
            # emptyDir volumes count against ephemeral storage: they must fit its limit
            for volume in pod.get("volumes", []):
                if "emptyDir" in volume:
                    assert _bytes(volume["emptyDir"]["sizeLimit"]) < _bytes(
                        res["limits"]["ephemeral-storage"]
                    ), name


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def _query_routes() -> set[tuple[str, str]]:
    app = create_app(QuerySettings(), ElasticsearchSettings())
    return {
        (method, route.path)
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
    }


def test_probes_ports_and_paths_are_what_the_code_serves(
    rendered: tuple[str, list[Obj]],
) -> None:
    """Each probe asks a route the process really serves, on the port it really listens
    on (the ConfigMap's port settings and the container ports agree)."""
    _, objs = rendered
    config = _config(objs)
    routes = _query_routes()
    query = _one(objs, "Deployment", "artifact-search-query")
    (api,) = _pod_spec(query)["containers"]
    assert api["args"][:1] == ["api"]
    port = int(api["args"][api["args"].index("--port") + 1])
    assert port == int(config["QUERY_PORT"])
    assert {p["name"]: p["containerPort"] for p in api["ports"]} == {"http": port}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ("GET", api[probe]["httpGet"]["path"]) in routes, probe
        assert api[probe]["httpGet"]["port"] == "http"
    assert api["livenessProbe"]["httpGet"]["path"] == "/api/health"  # process up only
    assert api["readinessProbe"]["httpGet"]["path"] == "/api/ready"  # Elasticsearch answers

    indexer = _one(objs, "StatefulSet", "artifact-search-indexer")
    (consumer,) = _pod_spec(indexer)["containers"]
    metrics_port = int(config["INDEXER_METRICS_PORT"])
    assert {p["name"]: p["containerPort"] for p in consumer["ports"]} == {"metrics": metrics_port}
    served = asyncio.run(_health_server_paths([consumer[p]["httpGet"]["path"] for p in _PROBES]))
    assert served == {"/livez": 200, "/readyz": 200}
    for probe in _PROBES:
        assert consumer[probe]["httpGet"]["port"] == "metrics"
    assert consumer["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe"):
        assert consumer[probe]["httpGet"]["path"] == "/livez"
    # the headless Service and the ServiceMonitors name the same ports
    metrics = _one(objs, "Service", "artifact-search-indexer-metrics")
    assert [(p["name"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", metrics_port)]


_PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def test_sync_bridge_is_off_until_enabled_and_configured_by_real_settings(
    rendered: tuple[str, list[Obj]],
) -> None:
    """sync-prefect: 0 replicas until a Prefect database or API is configured, never a
    second bridge; its settings are SyncSettings fields; the checkpoint files live on the
    volume; probes and port are the health server's."""
    overlay, objs = rendered
    sync = _one(objs, "StatefulSet", "artifact-search-sync-prefect")
    assert sync["spec"]["replicas"] == 0
    (bridge,) = _pod_spec(sync)["containers"]
    assert bridge["args"] == ["sync-prefect"]
    env = {e["name"]: e["value"] for e in bridge["env"]}
    fields = set(SyncSettings.model_fields)
    assert {name.removeprefix("SYNC_").lower() for name in env} <= fields, env
    (volume,) = [m for m in bridge["volumeMounts"] if m["name"] == "state"]
    for name in ("SYNC_STATE_FILE", "SYNC_API_STATE_FILE"):
        assert os.path.dirname(env[name]) == volume["mountPath"], name
    assert [t["metadata"]["name"] for t in sync["spec"]["volumeClaimTemplates"]] == ["state"]
    port = int(env["SYNC_METRICS_PORT"])
    assert env["SYNC_METRICS_HOST"] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in bridge["ports"]} == {"metrics": port}
    served = asyncio.run(_health_server_paths([bridge[p]["httpGet"]["path"] for p in _PROBES]))
    assert served == {"/livez": 200, "/readyz": 200}
    egress = _one(objs, "NetworkPolicy", "artifact-search-sync-prefect-egress")
    ports = {p["port"] for rule in egress["spec"]["egress"] for p in rule["ports"]}
    assert ports == {5432, 4200, 443}  # Prefect's PostgreSQL, a server's API, Prefect Cloud
    monitors = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceMonitor"}
    assert ("artifact-search-sync-prefect" in monitors) == (overlay == "prod")


def test_alerts_worker_gets_the_change_feed_and_probes_what_it_serves(
    rendered: tuple[str, list[Obj]],
) -> None:
    """The alerts worker runs where the indexer publishes its change feed; its probes and
    metrics port are the health server's, on ALERTS_METRICS_PORT; scraped in prod."""
    overlay, objs = rendered
    config = _config(objs)
    assert config["INDEXER_PUBLISH_CHANGES"] == "true"  # else the worker never sees a change
    assert config["ALERTS_METRICS_HOST"] == "0.0.0.0"
    alerts = _one(objs, "Deployment", "artifact-search-alerts")
    (worker,) = _pod_spec(alerts)["containers"]
    assert worker["args"] == ["alerts"]
    port = int(config["ALERTS_METRICS_PORT"])
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {"metrics": port}
    served = asyncio.run(_health_server_paths([worker[p]["httpGet"]["path"] for p in _PROBES]))
    assert served == {"/livez": 200, "/readyz": 200}
    assert all(worker[p]["httpGet"]["port"] == "metrics" for p in _PROBES)
    metrics = _one(objs, "Service", "artifact-search-alerts-metrics")
    assert [(p["name"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", port)]
    monitors = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceMonitor"}
    assert ("artifact-search-alerts" in monitors) == (overlay == "prod")


async def _health_server_paths(paths: list[str]) -> dict[str, int]:
    """Status of each path on the real health server that the indexer, the alerts worker and
    sync-prefect all run (ready, as when running)."""
    server = HealthServer("127.0.0.1", 0)
    await server.start()
    server.ready = True
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.bound_port}") as http:
            return {path: (await http.get(path)).status_code for path in paths}
    finally:
        await server.stop()


def test_long_running_pods_spread(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    for kind, name in [
        ("Deployment", "artifact-search-query"),
        ("StatefulSet", "artifact-search-indexer"),
        ("Deployment", "artifact-search-alerts"),
    ]:
        dep = _one(objs, kind, name)
        pod = _pod_spec(dep)
        keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in pod["topologySpreadConstraints"]:
            assert _selects(constraint["labelSelector"], pod_labels(dep))


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
    # Services and Ingresses stop sending before SIGTERM, within the grace period
    delay = container["lifecycle"]["preStop"]["exec"]["command"]
    assert (
        delay[0] == "sleep" and 0 < int(delay[1]) < _pod_spec(dep)["terminationGracePeriodSeconds"]
    )
    pdb = _one(objs, "PodDisruptionBudget", "artifact-search-query")
    assert _selects(pdb["spec"]["selector"], pod_labels(dep))
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_bootstrap_runs_on_every_start_and_jobs_are_templates(
    rendered: tuple[str, list[Obj]],
) -> None:
    _, objs = rendered
    sts = _one(objs, "StatefulSet", "artifact-search-indexer")
    (init,) = _pod_spec(sts)["initContainers"]
    assert init["args"] == ["bootstrap"]  # re-runs on upgrades, unlike a one-shot Job
    assert not [o for o in objs if o["kind"] == "Job"]  # nothing immutable to re-apply
    for name, command in [
        ("artifact-search-replay", "replay"),
        ("artifact-search-backfill-prefect", "backfill-prefect"),
    ]:
        cron = _one(objs, "CronJob", name)
        (container,) = _pod_spec(cron)["containers"]
        assert container["args"][0] == command
        # applying the manifests must never start one by itself
        assert cron["spec"]["suspend"] is True
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def _upgrade(tmp_path: Path) -> list[Obj]:
    """prod, upgraded: a new image tag, more indexer replicas, another config value."""
    overlay = tmp_path / "upgrade"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "prod", overlay)],
                "images": [{"name": "artifact-search", "newTag": "0.2.0"}],
                "configMapGenerator": [
                    {"name": CONFIG, "behavior": "merge", "literals": ["LOG_LEVEL=DEBUG"]}
                ],
                "patches": [{"path": "scale.yaml"}],
            }
        )
    )
    (overlay / "scale.yaml").write_text(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: artifact-search-indexer\n"
        "spec:\n  replicas: 9\n"
    )
    return kustomize_build(overlay)


def test_an_upgrade_changes_only_what_kubernetes_lets_change(tmp_path: Path) -> None:
    """Render prod, then prod with another image tag, more replicas and another config:
    every object keeps its kind and name (the config's name changes with its content), the
    fields Kubernetes refuses to change on an existing object are identical, the pods that
    read the config roll to the new one, and the HPA keeps owning the API's scale."""
    before_objs = kustomize_build(K8S / "overlays" / "prod")
    after_objs = _upgrade(tmp_path)
    old_config, new_config = _config_map(before_objs), _config_map(after_objs)
    assert new_config["data"]["LOG_LEVEL"] == "DEBUG"
    assert old_config["metadata"]["name"] != new_config["metadata"]["name"]

    def keyed(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
        return {(o["kind"], o["metadata"]["name"]): o for o in objs if o["kind"] != "ConfigMap"}

    before, after = keyed(before_objs), keyed(after_objs)
    assert set(after) == set(before)
    old, new = (
        before[("StatefulSet", "artifact-search-indexer")],
        after[("StatefulSet", "artifact-search-indexer")],
    )
    for field in ("selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"):
        assert old["spec"][field] == new["spec"][field], field
    assert new["spec"]["replicas"] == 9
    assert {c["image"] for c in _containers(new)} == {"artifact-search:0.2.0"}
    query = ("Deployment", "artifact-search-query")
    assert before[query]["spec"]["selector"] == after[query]["spec"]["selector"]
    assert "replicas" not in after[query]["spec"]  # the HPA's count survives the apply
    for key, obj in after.items():
        if obj["kind"] not in WORKLOADS:
            continue
        # a changed pod template rolls the pods: new image, and the new config by name
        assert _pod_spec(obj) != _pod_spec(before[key]), key
        for container in _containers(obj):
            (ref,) = [
                e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e
            ]
            assert ref == new_config["metadata"]["name"], key
    for key in [k for k in after if k[0] not in WORKLOADS and k[0] != "Namespace"]:
        if key[0] in ("ServiceMonitor", "Ingress", "Service", "NetworkPolicy"):
            assert after[key] == before[key], key  # nothing else moves


def test_network_policies(rendered: tuple[str, list[Obj]]) -> None:
    """Default deny, then DNS, Kafka and Elasticsearch for every pod, PostgreSQL for the
    backfill's pods only, ingress only to the ports the processes listen on."""
    _, objs = rendered
    config = _config(objs)
    default = _one(objs, "NetworkPolicy", "artifact-search-default")
    assert set(default["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in default["spec"]
    egress_ports = {p["port"] for rule in default["spec"]["egress"] for p in rule["ports"]}
    assert {53, 9092, 9200} <= egress_ports and 5432 not in egress_ports
    backfill = _one(objs, "NetworkPolicy", "artifact-search-backfill-egress")
    assert {p["port"] for r in backfill["spec"]["egress"] for p in r["ports"]} == {5432}
    postgres_pods = [
        o for o in _workloads(objs) if _selects(backfill["spec"]["podSelector"], pod_labels(o))
    ]
    assert [o["metadata"]["name"] for o in postgres_pods] == ["artifact-search-backfill-prefect"]
    query = _one(objs, "NetworkPolicy", "artifact-search-query-ingress")
    assert {p["port"] for r in query["spec"]["ingress"] for p in r["ports"]} == {
        int(config["QUERY_PORT"])
    }
    metrics = _one(objs, "NetworkPolicy", "artifact-search-indexer-metrics")
    assert {p["port"] for r in metrics["spec"]["ingress"] for p in r["ports"]} == {
        int(config["INDEXER_METRICS_PORT"])
    }


def test_service_monitors_scrape_with_the_credential_metrics_needs(
    rendered: tuple[str, list[Obj]],
) -> None:
    """The API's /metrics needs a credential once auth is on: the ServiceMonitor sends the
    Secret's METRICS_SCRAPE_KEY as a bearer token, which the example Secret lists among
    QUERY_API_KEYS, and the real app accepts it (and refuses a scrape without it)."""
    overlay, objs = rendered
    monitors = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceMonitor"}
    assert bool(monitors) == (overlay == "prod")
    if not monitors:
        return
    for monitor in monitors.values():
        services = [
            s
            for s in objs
            if s["kind"] == "Service"
            and _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
            and s["spec"].get("type") != "ExternalName"
        ]
        ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        assert services and {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    (endpoint,) = monitors["artifact-search-query"]["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and ("GET", "/metrics") in _query_routes()
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert credentials["name"] == "artifact-search-secrets"
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    scrape_key = secret[credentials["key"]]
    settings = QuerySettings.model_validate({"api_keys": yaml.safe_load(secret["QUERY_API_KEYS"])})
    assert asyncio.run(_metrics_status(settings, scrape_key)) == 200
    assert asyncio.run(_metrics_status(settings, None)) == 401


def test_prod_ships_the_alerting_rules_and_the_dashboard(rendered: tuple[str, list[Obj]]) -> None:
    """The rules and the dashboard go with the ServiceMonitors (prod); the ConfigMap holds
    deploy/grafana/artifact-search.json unchanged, under the label Grafana's sidecar loads
    (their metric names: tests/ops/test_dashboard_metrics.py)."""
    overlay, objs = rendered
    rules = [o for o in objs if o["kind"] == "PrometheusRule"]
    dashboards = [o for o in objs if o["metadata"].get("labels", {}).get("grafana_dashboard")]
    if overlay != "prod":
        assert not rules and not dashboards
        return
    (rule,) = rules
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "ArtifactSearchConsumerLag",
        "ArtifactSearchDeadLetters",
        "ArtifactSearchQuery5xx",
        "ArtifactSearchIndexerNotReady",
    }
    (dashboard,) = dashboards
    assert (
        dashboard["kind"] == "ConfigMap"
        and dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    )
    shipped = dashboard["data"]["artifact-search.json"]
    assert shipped == (K8S.parent / "grafana" / "artifact-search.json").read_text()
    assert json.loads(shipped)["uid"] == "prefect-artifact-search"


async def _metrics_status(settings: QuerySettings, key: str | None) -> int:
    app = create_app(settings, ElasticsearchSettings())
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc"
    ) as http:
        return (await http.get("/metrics", headers=headers)).status_code


def test_schema_validation_catches_a_broken_object(rendered: tuple[str, list[Obj]]) -> None:
    _, objs = rendered
    broken = _one(objs, "Deployment", "artifact-search-query")
    broken = {**broken, "spec": {**broken["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)

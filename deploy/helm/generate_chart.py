"""Generates the Helm chart deploy/helm/artifact-search from the kustomize manifests.

The kustomize base (deploy/k8s/base) with its components (one-url, servicemonitor,
grafana) stays the one description of the deployment: this script renders it with
kustomize and turns each object into a template, replacing the few fields a Helm user sets
(image, configuration, replicas, resources, the optional parts) with values. Run it with
`make helm-chart` after changing the manifests; tests/ops/test_helm_chart.py fails when the
checked-in chart differs from what it generates, and compares `helm template` with
`kustomize build`.

Usage: generate_chart.py [--out DIR] [--kustomize PATH]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "source"
CHART = HERE / "artifact-search"
NAME = "artifact-search"
CONFIG = f"{NAME}-config"

Obj = dict[str, Any]

#: kind/name -> the value that switches the object on; absent objects are always rendered
OPTIONAL = {
    "ServiceMonitor": "monitoring.enabled",
    "PrometheusRule": "monitoring.enabled",
    "ConfigMap/artifact-search-grafana-dashboard": "grafana.dashboard.enabled",
    "Ingress/artifact-search": "oneUrl.enabled",
    "Service/prefect-server": "oneUrl.enabled",
}
#: workload name -> (values key, container) whose replicas and resources are values
WORKLOADS = {
    "artifact-search-indexer": ("indexer", "indexer"),
    "artifact-search-query": ("query", "query"),
    "artifact-search-alerts": ("alerts", "alerts"),
    "artifact-search-sync-prefect": ("syncPrefect", "sync-prefect"),
}
IMAGE = 'printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion)'
CHECKSUM = ".Values.config | toJson | sha256sum | quote"

_INLINE = "@@inline:"  # a scalar replaced by a template expression, unquoted
_BLOCK = "@@block:"  # a mapping replaced by `toYaml` of a value
_FILE = "@@file:"  # a multi-line string read from the chart's files/


def kustomize_build(kustomize: str, source: Path) -> list[Obj]:
    """The objects `kustomize build source` renders."""
    out = subprocess.run(
        [kustomize, "build", str(source)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _containers(obj: Obj) -> list[Obj]:
    pod = _pod_spec(obj)
    return [] if pod is None else [*pod.get("initContainers", []), *pod["containers"]]


def _pod_template(obj: Obj) -> Obj | None:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    template: Obj | None = spec.get("template")
    return template


def _pod_spec(obj: Obj) -> Obj | None:
    template = _pod_template(obj)
    return None if template is None else template["spec"]


def templated(obj: Obj, defaults: dict[str, Any], image: str) -> Obj:
    """`obj` with markers where values go; `defaults` collects those values' defaults."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "ConfigMap" and name.startswith(CONFIG + "-"):
        obj["metadata"]["name"] = CONFIG  # kustomize's content hash; Helm rolls by checksum
        defaults["config"] = dict(obj["data"])
        obj["data"] = _BLOCK + "config"
    if kind == "ConfigMap" and name == f"{NAME}-grafana-dashboard":
        obj["data"] = {key: _FILE + key for key in obj["data"]}
    for container in _containers(obj):
        if container["image"] != image:
            raise SystemExit(f"{kind}/{name}: unexpected image {container['image']}")
        container["image"] = _INLINE + IMAGE
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref and ref["name"].startswith(CONFIG + "-"):
                ref["name"] = CONFIG
    if name in WORKLOADS and kind in ("Deployment", "StatefulSet"):
        key, container_name = WORKLOADS[name]
        values = defaults.setdefault(key, {})
        if "replicas" in obj["spec"]:
            values["replicas"] = obj["spec"]["replicas"]
            obj["spec"]["replicas"] = _INLINE + f".Values.{key}.replicas"
        container = next(c for c in obj["spec"]["template"]["spec"]["containers"]
                         if c["name"] == container_name)  # fmt: skip
        values["resources"] = container["resources"]
        container["resources"] = _BLOCK + f"{key}.resources"
        template = obj["spec"]["template"]
        annotations = template["metadata"].setdefault("annotations", {})
        annotations["checksum/config"] = _INLINE + CHECKSUM  # a configuration change rolls the pods
    if kind == "HorizontalPodAutoscaler":
        auto = defaults.setdefault("query", {}).setdefault("autoscaling", {})
        for field in ("minReplicas", "maxReplicas"):
            auto[field] = obj["spec"][field]
            obj["spec"][field] = _INLINE + f".Values.query.autoscaling.{field}"
    if kind == "Service" and name == "prefect-server":
        defaults.setdefault("oneUrl", {})["prefectServer"] = obj["spec"]["externalName"]
        obj["spec"]["externalName"] = _INLINE + ".Values.oneUrl.prefectServer | quote"
    if kind == "Ingress":
        defaults.setdefault("oneUrl", {})["ingressClassName"] = obj["spec"]["ingressClassName"]
        obj["spec"]["ingressClassName"] = _INLINE + ".Values.oneUrl.ingressClassName | quote"
    return obj


def _escape(text: str) -> str:
    """Literal `{{`/`}}` (Prometheus and Grafana templates) kept literal through Helm."""
    return re.sub(r"\{\{|\}\}", lambda m: '{{ "' + m.group() + '" }}', text)


def render_template(obj: Obj) -> str:
    """One object as Helm template text."""
    text = _escape(yaml.safe_dump(obj, sort_keys=True, width=1000))
    lines = []
    for line in text.splitlines():
        block = re.fullmatch(r"( *)(\S+): '?" + re.escape(_BLOCK) + r"([^\s']+)'?", line)
        file = re.fullmatch(r"( *)(\S+): '?" + re.escape(_FILE) + r"([^\s']+)'?", line)
        inline = re.fullmatch(r"( *)(- )?(\S+: )?'?" + re.escape(_INLINE) + r"(.*?)'?", line)
        if block:
            indent, key, value = block.groups()
            if value == "config":  # every value a string, as a ConfigMap wants
                lines.append(f"{indent}{key}:")
                lines.append(f"{indent}  {{{{- range $k, $v := .Values.config }}}}")
                lines.append(f"{indent}  {{{{ $k }}}}: {{{{ $v | toString | quote }}}}")
                lines.append(f"{indent}  {{{{- end }}}}")
            else:
                lines.append(f"{indent}{key}:")
                lines.append(
                    f"{indent}  {{{{- toYaml .Values.{value} | nindent {len(indent) + 2} }}}}"
                )
        elif file:
            indent, key, name = file.groups()
            lines.append(f"{indent}{key}: |-")
            read = f'.Files.Get "files/{name}" | trimSuffix "\\n"'
            lines.append(f"{indent}  {{{{- {read} | nindent {len(indent) + 2} }}}}")
        elif inline:
            indent, dash, key, expr = inline.groups()
            expr = expr.replace("''", "'")
            lines.append(f"{indent}{dash or ''}{key or ''}{{{{ {expr} }}}}")
        else:
            lines.append(line)
    body = "\n".join(lines) + "\n"
    switch = OPTIONAL.get(f"{obj['kind']}/{obj['metadata']['name']}", OPTIONAL.get(obj["kind"]))
    if switch:
        body = f"{{{{- if .Values.{switch} }}}}\n{body}{{{{- end }}}}\n"
    return body


VALUES_HEAD = """\
# Values of the artifact-search chart. Generated by deploy/helm/generate_chart.py from the
# kustomize base (deploy/k8s/base): the defaults below are the base's. Install once per
# namespace (object names are fixed); credentials go into a Secret named
# artifact-search-secrets (deploy/k8s/secret.example.yaml), which every pod reads.
image:
  repository: artifact-search
  tag: ""  # the chart's appVersion when empty
"""
VALUES_TAIL = """\
# ServiceMonitors and the PrometheusRule (needs the Prometheus Operator's CRDs)
monitoring:
  enabled: false
# the Grafana dashboard as a ConfigMap (for Grafana's dashboard sidecar)
grafana:
  dashboard:
    enabled: false
"""


def chart_files(objs: list[Obj], image: str, app_version: str) -> dict[str, str]:
    """Path within the chart -> content."""
    defaults: dict[str, Any] = {}
    files: dict[str, str] = {}
    for obj in objs:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == f"{NAME}-grafana-dashboard":
            for key, content in obj["data"].items():
                files[f"files/{key}"] = content if content.endswith("\n") else content + "\n"
        out = templated(obj, defaults, image)
        files[f"templates/{obj['kind'].lower()}-{out['metadata']['name']}.yaml"] = render_template(
            out
        )
    defaults["oneUrl"] = {"enabled": True, **defaults["oneUrl"]}
    config = {"config": defaults.pop("config")}
    files["values.yaml"] = (
        VALUES_HEAD
        + "# the environment of every pod (README: Configuration)\n"
        + yaml.safe_dump(config, sort_keys=True, width=1000)
        + yaml.safe_dump(defaults, sort_keys=True, width=1000)
        + VALUES_TAIL
    )
    files["Chart.yaml"] = yaml.safe_dump(
        {
            "apiVersion": "v2",
            "name": NAME,
            "description": "Prefect-compatible artifact search on Kafka and Elasticsearch "
            "(generated from deploy/k8s by deploy/helm/generate_chart.py)",
            "type": "application",
            "version": app_version,
            "appVersion": app_version,
        },
        sort_keys=False,
    )
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHART, help="chart directory to write")
    parser.add_argument("--kustomize", default=shutil.which("kustomize") or "kustomize")
    args = parser.parse_args()
    base = yaml.safe_load((HERE.parent / "k8s" / "base" / "kustomization.yaml").read_text())
    tag = next(i["newTag"] for i in base["images"] if i["name"] == NAME)
    files = chart_files(kustomize_build(args.kustomize, SOURCE), f"{NAME}:{tag}", tag)
    if args.out.exists():
        shutil.rmtree(args.out)
    for path, content in sorted(files.items()):
        target = args.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

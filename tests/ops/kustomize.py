"""A small kustomize renderer: the subset deploy/k8s uses, in plain Python.

Supported kustomization fields: `resources` (files, or directories holding a
kustomization), `components`, `namespace`, `labels` (pairs added to
`metadata.labels`), `images` (newName/newTag by image name) and `patches` with
`path` (a strategic-merge patch identified by its kind and name). Strategic merge
here: mappings merge recursively, lists of mappings whose items all have a `name`
merge by name (containers, env, volumes, ports), any other list is replaced. That
covers the patches in deploy/k8s; anything else raises, so a manifest change that
needs more fails the test instead of rendering wrongly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

_KNOWN = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "labels",
    "images",
    "patches",
}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out_list = [copy.deepcopy(i) for i in base]
        index = {item["name"]: n for n, item in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = _merge(out_list[index[item["name"]]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    if obj.get("kind") == "CronJob":
        pod = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def render(directory: Path, objects: list[Obj] | None = None) -> list[Obj]:
    """The objects of the kustomization in `directory` (components apply onto `objects`)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KNOWN
    if unknown:
        raise NotImplementedError(f"{directory}: unsupported kustomization fields {unknown}")
    out: list[Obj] = list(objects or [])
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        out += render(path) if path.is_dir() else _docs(path)
    for entry in kustomization.get("components", []):
        out = render((directory / entry).resolve(), out)
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise NotImplementedError(f"{directory}: only `patches: - path:` is supported")
        for patch in _docs(directory / patch_entry["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            hits = [n for n, o in enumerate(out) if (o["kind"], o["metadata"]["name"]) == key]
            if len(hits) != 1:
                raise ValueError(f"{directory}: patch target {key} matched {len(hits)} objects")
            out[hits[0]] = _merge(out[hits[0]], patch)
    for group in kustomization.get("labels", []):
        if set(group) - {"pairs"}:
            raise NotImplementedError("only `labels: - pairs:` is supported")
        for obj in out:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(group["pairs"])
    for image in kustomization.get("images", []):
        for obj in out:
            for container in _containers(obj):
                name, _, _ = container["image"].partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
    if "namespace" in kustomization:
        for obj in out:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    return out

"""kube-score, the Kubernetes ecosystem's linter, over the rendered overlays
(tests/ops/k8s_tools.py runs it; the Helm chart's test runs it on `helm template` too).

Every default check runs, plus two optional ones (seccomp profiles, container ports);
warnings fail too. Ignored, with the reason:

- container-image-pull-policy: images are pinned release tags (never `latest`, checked in
  test_k8s_manifests.py), so `IfNotPresent` is safe and lets pods restart while the
  registry is unreachable;
- deployment/statefulset-has-host-podantiaffinity: the pods spread over hosts and zones
  with topologySpreadConstraints, which this check does not read
  (pod-topology-spread-constraints checks them).

The dev overlay's single-replica HPA is ignored on that object only (its annotation).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.k8s_tools import kube_score, kustomize_build

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kube_score_passes_on_every_overlay(overlay: str, tmp_path: Path) -> None:
    objs = kustomize_build(K8S / "overlays" / overlay)
    result = kube_score(objs, tmp_path)
    problems = [
        line for line in result.stdout.splitlines() if line.startswith(("[CRITICAL]", "[WARNING]"))
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    # it did look at the workloads
    assert "artifact-search-indexer" in result.stdout and "[OK]" in result.stdout


def test_kube_score_catches_replicas_beside_the_hpa(tmp_path: Path) -> None:
    """The defect this deployment once had: a `replicas` next to an HPA resets the scale."""
    objs = kustomize_build(K8S / "overlays" / "prod")
    for obj in objs:
        if obj["kind"] == "Deployment":
            obj["spec"]["replicas"] = 3
    result = kube_score(objs, tmp_path)
    assert result.returncode != 0
    assert "targeted by a HPA, but a static replica count is configured" in result.stdout

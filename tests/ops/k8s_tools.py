"""The Kubernetes ecosystem's own tools for the manifest tests: kustomize, kube-score, helm.

Both are Go programs built from the Go module proxy at pinned versions (`.ci/run` installs
them into `$(go env GOPATH)/bin`). A missing tool fails the test under CI (``CI=true``)
and skips it elsewhere, with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

GO_TOOLS = {
    "kustomize": "sigs.k8s.io/kustomize/kustomize/v5@v5.8.1",
    "kube-score": "github.com/zegl/kube-score/cmd/kube-score@v1.20.0",
    "helm": "helm.sh/helm/v3/cmd/helm@v3.22.0",
}
#: kube-score's arguments; what is ignored, and why, is in tests/ops/test_k8s_lint.py
KUBE_SCORE_ARGS = [
    "--output-format",
    "ci",
    "--exit-one-on-warning",
    "--enable-optional-test",
    "container-seccomp-profile",
    "--enable-optional-test",
    "container-ports-check",
    "--ignore-test",
    "container-image-pull-policy",
    "--ignore-test",
    "deployment-has-host-podantiaffinity",
    "--ignore-test",
    "statefulset-has-host-podantiaffinity",
]

Obj = dict[str, Any]


def go_tool(name: str) -> str:
    """The path of a Go tool: on PATH, in $GOBIN, or in $GOPATH/bin (default ~/go/bin)."""
    found = shutil.which(name)
    if not found:
        gobin = os.environ.get("GOBIN") or str(
            Path(os.environ.get("GOPATH") or Path.home() / "go") / "bin"
        )
        candidate = Path(gobin) / name
        found = str(candidate) if candidate.is_file() else None
    if found:
        return found
    message = f"{name} is not installed: go install {GO_TOOLS[name]} (.ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def kustomize_build(directory: Path) -> list[Obj]:
    """`kustomize build directory`, as objects."""
    proc = subprocess.run(
        [go_tool("kustomize"), "build", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kustomize build {directory} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kube_score(objs: list[Obj], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`kube-score score` over `objs` with the project's arguments."""
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objs))
    return subprocess.run(
        [go_tool("kube-score"), "score", *KUBE_SCORE_ARGS, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

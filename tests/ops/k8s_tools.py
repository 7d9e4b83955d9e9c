"""The Kubernetes ecosystem's own tools for the manifest tests: kustomize and kube-score.

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
}

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

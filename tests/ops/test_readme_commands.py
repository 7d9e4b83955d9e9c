"""Every command the README shows refers to something that exists, so the README cannot drift.

The commands come from README.md's ```bash blocks and from its inline code spans that start
with a command this test knows (`make ...`, `artifact-search ...`, `kubectl ...`, ...). Each
is checked against the thing it names, without running it:

- `make T VAR=...`: `make -n T VAR=...` succeeds (the target exists; `-n` runs no recipe);
- `artifact-search SUB --flag` / `python -m artifact_search.cli SUB`: SUB is a subcommand, each flag
  one of its options, and `python -m artifact_search.cli SUB --help` exits 0;
- `curl [-X METHOD] http://127.0.0.1:4200/PATH`: the API serves METHOD on PATH (`<id>`-style
  placeholders stand for path parameters);
- `kubectl ... kind/name`, `--from=cronjob/name`: the base manifests define that object;
  `kubectl apply -k DIR`: DIR has a kustomization;
- `docker build ... .`, `docker compose -f FILE`: the Dockerfile and compose files exist;
- `helm install|upgrade RELEASE CHART ...`: `helm template` with the same arguments renders
  (the chart exists and every `--set` is accepted); a bare `helm lint`/`helm template` is prose;
- `deploy/.../x.sh SUB`: SUB is a case of the script; `python -m MODULE`: the module imports.

A command of any other program fails the test until a check for it is written here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from fastapi.routing import APIRoute

from artifact_search.api import create_api
from artifact_search.cli import subcommand_flags
from services.config import ElasticsearchSettings, QuerySettings
from tests.ops.k8s_tools import go_tool
from tests.ops.readme import commands as _commands
from tests.ops.readme import readme_commands

REPO = Path(__file__).resolve().parents[2]
API = "http://127.0.0.1:4200"
COMMANDS = readme_commands()


def _id(cmd: list[str]) -> str:
    return " ".join(cmd)[:60]


# --- the checks, one per program ---------------------------------------------------------------


def _check_make(args: list[str]) -> None:
    assert args, "make without a target"
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    assert proc.returncode == 0, f"make -n {' '.join(args)}: {proc.stderr[-1000:]}"


@cache
def _subcommands() -> dict[str, set[str]]:
    return subcommand_flags()


@cache
def _help_exits_0(args: tuple[str, ...]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "artifact_search.cli", *args, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (
        f"artifact_search.cli {' '.join(args)} --help: {proc.stderr[-1000:]}"
    )


def _check_cli(args: list[str]) -> None:
    if args in ([], ["--help"]):
        _help_exits_0(())
        return
    sub, *rest = args
    assert sub in _subcommands(), f"artifact-search has no subcommand {sub!r}"
    options = _subcommands()[sub]
    for token in rest:
        if token.startswith("-"):
            assert token.split("=")[0] in options, f"artifact-search {sub} has no {token}"
    _help_exits_0((sub,))


@cache
def _routes() -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of every operation the API serves: its OpenAPI document (routers
    included) and the routes left out of it (the search page, /metrics)."""
    app = create_api(QuerySettings(), ElasticsearchSettings())
    ops = [(m.upper(), p) for p, item in app.openapi()["paths"].items() for m in item]
    ops += [(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods]
    return [(m, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$")) for m, p in ops]


def _check_curl(args: list[str]) -> None:
    method = args[args.index("-X") + 1] if "-X" in args else None
    if method is None:
        method = "POST" if any(a in ("-d", "--data") for a in args) else "GET"
    urls = [a.replace("$API", f"{API}/api") for a in args if "127.0.0.1:4200" in a or "$API" in a]
    assert len(urls) == 1, f"one URL of the API expected in {args}"
    path = re.sub(r"<[^>]+>", "x", urls[0].removeprefix(API))
    assert any(method == m and regex.match(path) for m, regex in _routes()), (
        f"the API serves no {method} {path}"
    )


@cache
def _k8s_objects() -> set[tuple[str, str]]:
    objs = set()
    for path in (REPO / "deploy" / "k8s" / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                objs.add((doc["kind"].lower(), doc["metadata"]["name"]))
    return objs


def _check_kubectl(args: list[str]) -> None:
    if "-k" in args[:-1]:  # (a bare `kubectl apply -k` is prose)
        directory = REPO / args[args.index("-k") + 1]
        assert (directory / "kustomization.yaml").is_file(), f"no kustomization in {directory}"
    refs = [a.split("=", 1)[1] if a.startswith("--from=") else a for a in args if "/" in a]
    for ref in refs:
        if ref.startswith("deploy/"):
            continue
        kind, name = ref.split("/", 1)
        assert (kind, name) in _k8s_objects(), f"the manifests define no {kind}/{name}"


def _check_docker(args: list[str]) -> None:
    if args[0] == "build":
        assert args[-1] == "." and (REPO / "Dockerfile").is_file()
    elif args[0] == "compose":
        files = [args[i + 1] for i, a in enumerate(args) if a == "-f"]
        assert files, f"docker compose without -f: {args}"
        for file in files:
            assert "services" in yaml.safe_load((REPO / file).read_text()), file
    else:
        pytest.fail(f"no check for docker {args[0]}")


def _check_helm(args: list[str]) -> None:
    assert args[0] in ("install", "upgrade", "lint", "template"), f"no check for helm {args[0]}"
    if args[0] in ("lint", "template") and not [a for a in args[1:] if not a.startswith("-")]:
        return  # prose naming what the tests run (tests/ops/test_helm_chart.py)
    assert args[0] in ("install", "upgrade"), f"no check for helm {args}"
    chart = REPO / args[2]
    assert (chart / "Chart.yaml").is_file(), f"no chart in {chart}"
    flags = [a for a in args[3:] if a != "--create-namespace"]
    proc = subprocess.run(
        [go_tool("helm"), "template", args[1], str(chart), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "kind: StatefulSet" in proc.stdout, proc.stderr


def _check_script(script: str, args: list[str]) -> None:
    path = REPO / script
    assert path.is_file() and os.access(path, os.X_OK), f"{script} is not an executable file"
    if args:
        labels = re.compile(rf"^\s*(?:[\w-]+\|)*{re.escape(args[0])}(?:\|[\w-]+)*\)", re.M)
        assert labels.search(path.read_text()), f"{script} has no command {args[0]!r}"


def _check_python(args: list[str]) -> None:
    if args[:1] == ["-c"]:
        return  # a program of the reader's
    assert args[0] == "-m", f"no check for python {args}"
    if args[1] == "artifact_search.cli":
        _check_cli(args[2:])
    else:
        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"


def check(cmd: list[str]) -> None:
    """Check one command against what it names."""
    program, args = cmd[0], cmd[1:]
    if program == "make":
        _check_make(args)
    elif program == "artifact-search":
        _check_cli(args)
    elif program in ("python", "python3", ".venv/bin/python"):
        _check_python(args)
    elif program == "curl":
        _check_curl(args)
    elif program == "kubectl":
        _check_kubectl(args)
    elif program == "docker":
        _check_docker(args)
    elif program == "helm":
        _check_helm(args)
    elif program.startswith("deploy/") and program.endswith(".sh"):
        _check_script(program, args)
    else:
        pytest.fail(f"no check for {program!r} (from the README): add one to {__name__}")


def test_the_readme_has_commands_of_each_kind() -> None:
    """Guards the extraction: a format change that hid the commands would pass vacuously."""
    programs = {cmd[0] for cmd in COMMANDS}
    assert {"make", "artifact-search", "curl", "kubectl", "docker", "helm"} <= programs, programs
    assert ["make", "up"] in COMMANDS and len(COMMANDS) >= 40
    # a comment ends at its line, a quoted body spanning lines stays one argument
    assert _commands("make up  # a comment\nmake test") == [["make", "up"], ["make", "test"]]
    assert _commands("A=1 curl -d '{\n}' x; make lint") == [
        ["curl", "-d", "{\n}", "x"],
        ["make", "lint"],
    ]


@pytest.mark.parametrize("cmd", COMMANDS, ids=_id)
def test_readme_command_refers_to_what_exists(cmd: list[str]) -> None:
    check(cmd)


@pytest.mark.parametrize(
    "cmd",
    [
        ["make", "no-such-target"],
        ["artifact-search", "replay", "--no-such-flag"],
        ["artifact-search", "no-such-command"],
        ["curl", "-s", f"{API}/api/no-such-path"],
        ["curl", "-s", "-X", "DELETE", f"{API}/api/artifacts/filter"],
        ["kubectl", "scale", "statefulset/no-such-indexer", "--replicas=0"],
        ["deploy/docker/build.sh", "no-such-image"],
        ["python", "-m", "no_such_module"],
        ["helm", "install", "x", "deploy/helm/no-such-chart"],
        ["terraform", "apply"],
    ],
    ids=_id,
)
def test_a_drifted_command_fails(cmd: list[str]) -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check(cmd)

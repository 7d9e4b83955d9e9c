"""The lock files (requirements/*.txt, written by `make lock`) agree with pyproject.toml.

Offline: the locks are read as text, pyproject.toml with tomllib. A requirement added to or
removed from pyproject.toml, or a bound that the locked version no longer meets, fails here
until `make lock` is run again. The locks are what the image installs (deploy/docker/build.sh,
Dockerfile) and what `make venv` installs, so drift would mean untested versions.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^ ;\\]+)\s*(?:;(?P<marker>[^\\]*))?"
)
VIA = re.compile(r"^\s+#\s+(?:via\s+)?(?P<what>[^\s#].*)$")


@dataclass
class Pin:
    """One `name==version` entry of a lock, with its hashes and the `# via` annotations."""

    name: str
    version: Version
    marker: str
    hashes: int = 0
    via: list[str] = field(default_factory=list)


def read_lock(path: Path) -> list[Pin]:
    """The entries of a lock written by `uv pip compile --generate-hashes` (annotations on)."""
    pins: list[Pin] = []
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins.append(
                Pin(
                    canonicalize_name(m["name"]),
                    Version(m["version"]),
                    (m["marker"] or "").strip(),
                )
            )
            continue
        if not pins:
            continue
        if "--hash=sha256:" in line:
            pins[-1].hashes += 1
        elif line.strip() == "# via":
            continue
        elif (v := VIA.match(line)) is not None:
            what = v["what"].strip()
            if what.endswith("(pyproject.toml)"):
                pins[-1].via.append(PROJECT)
            elif what.startswith("-r "):
                pins[-1].via.append(what)
            else:
                pins[-1].via.append(canonicalize_name(what))
    return pins


def required(extras: list[str]) -> list[Requirement]:
    """pyproject.toml's dependencies plus those of `extras`."""
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return reqs


ALL_EXTRAS = sorted(PYPROJECT["project"]["optional-dependencies"])
LOCKS = {
    "runtime.txt": required([]),
    "dev.txt": required(ALL_EXTRAS),
    "build.txt": [Requirement(r) for r in PYPROJECT["build-system"]["requires"]],
}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_requirement_is_locked_within_its_bounds(lock: str) -> None:
    pins = read_lock(ROOT / "requirements" / lock)
    by_name: dict[str, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
    for req in LOCKS[lock]:
        name = canonicalize_name(req.name)
        assert name in by_name, f"{req} is required by pyproject.toml but not in {lock}"
        for pin in by_name[name]:
            assert req.specifier.contains(pin.version, prereleases=True), (
                f"{lock} pins {name}=={pin.version}, pyproject.toml requires {req}: make lock"
            )


@pytest.mark.parametrize("lock", ["runtime.txt", "dev.txt"])
def test_direct_dependencies_are_exactly_pyprojects(lock: str) -> None:
    """A requirement removed from pyproject.toml leaves no direct pin behind."""
    direct = {p.name for p in read_lock(ROOT / "requirements" / lock) if PROJECT in p.via}
    assert direct == {canonicalize_name(r.name) for r in LOCKS[lock]}


def test_build_in_mirrors_the_build_system() -> None:
    lines = (ROOT / "requirements" / "build.in").read_text().splitlines()
    declared = {str(Requirement(x)) for x in lines if x.strip() and not x.startswith("#")}
    assert declared == {str(r) for r in LOCKS["build.txt"]}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_is_closed_hashed_and_names_no_index(lock: str) -> None:
    path = ROOT / "requirements" / lock
    pins = read_lock(path)
    assert pins, f"{lock} has no pins"
    names = {p.name for p in pins}
    for pin in pins:
        assert pin.hashes > 0, f"{pin.name} in {lock} has no hash"
        assert pin.via, f"{pin.name} in {lock} says nothing about why it is there"
        for parent in pin.via:
            assert parent == PROJECT or parent.startswith("-r ") or parent in names, (
                f"{pin.name} in {lock} is there for {parent}, which is not locked"
            )
    text = path.read_text()
    assert "://" not in text, f"{lock} names a URL"
    for line in text.splitlines():
        assert not re.match(r"\s*(-i|--index-url|--extra-index-url|-f|--find-links)\b", line), line


def test_the_parser_sees_what_it_must() -> None:
    """Guards the checks above against a lock format the regexes silently miss."""
    runtime = {p.name: p for p in read_lock(ROOT / "requirements" / "runtime.txt")}
    assert PROJECT in runtime["fastapi"].via
    assert "fastapi" in runtime["starlette"].via
    assert runtime["uvloop"].marker  # an environment marker survives the parse

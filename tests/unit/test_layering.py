"""Imports point down: composition roots -> deployables -> shared library; no shipped package
imports the test-data generator (docs/adr/0010-composition-roots-and-dev-tools.md).

Every module is parsed with `ast` (nothing is imported), so function-local imports count as
much as top-level ones, and relative imports are resolved against the module's package.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the layer of each shipped package: a module may import its own layer and the ones below
LAYERS = {"services": 0, "indexer": 1, "query": 1, "alerts": 2, "artifact_search": 3}
#: what no shipped package may import: the data generator and the tests
DEV_ONLY = {"datagen", "tests"}


def _imports(path: Path, root: Path) -> Iterator[tuple[str, int]]:
    """(top-level package, line) of every import in one module, relative ones resolved."""
    package = path.relative_to(root).parts[:-1]  # where a relative import starts (__init__ too)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                if base:  # (a relative import cannot leave the top-level package)
                    yield base[0], node.lineno
            elif node.module:
                yield node.module.split(".")[0], node.lineno


def violations(root: Path, shipped: set[str] | None = None) -> list[str]:
    """Every import of a shipped package that points up a layer or at a development-only
    package, as `path:line imports name`."""
    found = []
    for package in sorted(shipped if shipped is not None else set(LAYERS)):
        for path in sorted((root / package).rglob("*.py")):
            for name, line in _imports(path, root):
                upward = name in LAYERS and LAYERS[name] > LAYERS[package]
                if upward or name in DEV_ONLY:
                    found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return found


def _shipped() -> set[str]:
    """The top-level packages the wheel (and so the image) ships, from pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if any(fnmatch.fnmatch(path.parent.name, pattern) for pattern in include)
    }


def test_the_wheel_ships_the_layered_packages_and_no_dev_tool() -> None:
    assert _shipped() == set(LAYERS)


def test_imports_point_down_and_never_at_dev_tools() -> None:
    found = violations(ROOT)
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_the_check_finds_what_it_forbids(tmp_path: Path) -> None:
    """Upward imports (top-level, function-local, relative) and dev-tool imports are found;
    imports down a layer, within one and relative ones inside a package are not."""
    modules = {
        "services/__init__.py": "",
        "services/lazy.py": "def f():\n    from indexer.app import Indexer\n",
        "services/sub/__init__.py": "",
        "services/sub/rel.py": "from .. import config\nfrom . import other\n",
        "indexer/__init__.py": "",
        "indexer/fine.py": "from services import config\nfrom . import step\nimport query.sort\n",
        "query/__init__.py": "",
        "query/root.py": "import artifact_search.cli\n",
        "query/saved.py": "from alerts.routes import saved_search_extension\n",
        "alerts/__init__.py": "",
        "alerts/gen.py": "import os\n\nfrom datagen import dataset\nfrom query import app\n",
        "artifact_search/__init__.py": "",
        "artifact_search/cli.py": "import alerts, indexer, query, services\nimport tests.x\n",
    }
    for name, text in modules.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "alerts/gen.py:3 imports datagen",
        "artifact_search/cli.py:2 imports tests",
        "query/root.py:1 imports artifact_search",
        "query/saved.py:1 imports alerts",
        "services/lazy.py:2 imports indexer",
    ]

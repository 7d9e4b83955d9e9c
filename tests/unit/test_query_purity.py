"""The pure modules (query translation, Prefect schemas, the indexer's state machine) import
no client library and do no I/O."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PURE = [
    "services/prefect/filters.py",
    "services/prefect/sorting.py",
    "services/prefect/requests.py",
    "query/like.py",
    "query/translate.py",
    "query/sort.py",
    "query/paging.py",
    "query/search.py",
    "indexer/keys.py",
    "indexer/state.py",
    "indexer/fold.py",
    "indexer/graph.py",
    "indexer/collections.py",
    "indexer/step.py",
    "services/prefect/tables.py",
    "services/sync/pgoutput.py",
    "services/sync/changes.py",
    "services/sync/window.py",
    "services/sync/api_plan.py",
    "services/sync/api_passes.py",
]
FORBIDDEN = {
    "elasticsearch",
    "elastic_transport",
    "faststream",
    "aiokafka",
    "httpx",
    "asyncio",
    "rocksdict",
    "asyncpg",
    "psycopg2",
    "opentelemetry",  # tracing lives in the adapters (services/telemetry.py, indexer/tracing.py)
}


@pytest.mark.parametrize("relative", PURE)
def test_no_forbidden_imports(relative: str) -> None:
    tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


def test_importing_does_not_pull_clients() -> None:
    import subprocess
    import sys

    clients = sorted(FORBIDDEN - {"asyncio"})
    code = (
        "import sys\n"
        "import query.translate, query.sort, query.paging, query.search\n"
        "import services.prefect.requests\n"
        "import indexer.step\n"
        "import services.sync.changes, services.sync.window, services.sync.api_plan\n"
        "import services.sync.api_passes\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {clients!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)

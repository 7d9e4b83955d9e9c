"""The conformance oracle: the real Prefect 3.9.1 server over PostgreSQL.

``PrefectOracle(dsn, dataset)`` creates a fresh database on the PostgreSQL server
named by ``dsn``, runs Prefect's own migrations on it, loads the dataset with
direct SQL, and serves Prefect's FastAPI application in-process (no sockets, no
lifespan, so no background services). Use it as an async context manager::

    async with PrefectOracle(postgres_dsn, dataset) as oracle:
        status, body = await oracle.post("/artifacts/filter", {"limit": 5})
        status, body = await oracle.get(f"/artifacts/{artifact_id}")

Leaving the context drops the database.

Prefect keeps its database configuration in process-wide state, so only one
oracle can be open per process at a time (a second one raises ``RuntimeError``).
Prefect is a test dependency only: this module is never imported by the service.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from datagen.dataset import Dataset, JsonDict, compute_collections, parse_timestamp

if TYPE_CHECKING:
    from fastapi import FastAPI

BASE_URL = "http://oracle/api"

#: Settings that keep the in-process server quiet and self-contained.
_PREFECT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_API_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_API_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_API_SERVICES_FLOW_RUN_NOTIFICATIONS_ENABLED": "false",
    "PREFECT_API_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_API_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_API_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_API_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_API_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_API_EVENTS_STREAM_OUT_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
}

_ACTIVE: list[PrefectOracle] = []
_APP: list[FastAPI] = []


@dataclass
class OracleTimings:
    """Seconds spent in each setup phase (for reports and benchmarks)."""

    create_database: float = 0.0
    migrations: float = 0.0
    load: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def _sqlalchemy_url(dsn: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, "", ""))


def _prepare_environment(connection_url: str) -> None:
    """Point Prefect's settings at our database before any server module is used."""
    if not os.environ.get("PREFECT_HOME") or "_ORACLE_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="prefect-oracle-home-")
        os.environ["PREFECT_HOME"] = home
        os.environ["_ORACLE_HOME"] = home
    os.environ.update(_PREFECT_ENV)
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = connection_url
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = connection_url

    import prefect.context

    prefect.context.refresh_global_settings_context()


def _use_database(connection_url: str) -> None:
    """Make Prefect's database provider use ``connection_url`` (process-wide)."""
    from prefect.server.database.configurations import AsyncPostgresConfiguration
    from prefect.server.database.dependencies import MODELS_DEPENDENCIES
    from prefect.server.database.orm_models import AsyncPostgresORMConfiguration
    from prefect.server.database.query_components import AsyncPostgresQueryComponents

    MODELS_DEPENDENCIES["database_config"] = AsyncPostgresConfiguration(
        connection_url=connection_url
    )
    MODELS_DEPENDENCIES["query_components"] = AsyncPostgresQueryComponents()
    MODELS_DEPENDENCIES["orm"] = AsyncPostgresORMConfiguration()


def _forget_database() -> None:
    from prefect.server.database.dependencies import MODELS_DEPENDENCIES

    MODELS_DEPENDENCIES["database_config"] = None


async def _dispose_engines(connection_url: str) -> None:
    from prefect.server.database.configurations import ENGINES

    for key in [k for k in ENGINES if connection_url in k]:
        engine = ENGINES.pop(key, None)
        if engine is not None:
            await engine.dispose()


def _app() -> FastAPI:
    if not _APP:
        from prefect.server.api.server import create_app

        _APP.append(create_app(ephemeral=True, ignore_cache=True))
    return _APP[0]


# --- loading -------------------------------------------------------------------------


def _uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


def _time(value: str | None) -> Any:
    return None if value is None else parse_timestamp(value)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _flow_rows(dataset: Dataset) -> list[tuple[Any, ...]]:
    return [
        (
            uuid.UUID(f["id"]),
            _time(f["created"]),
            _time(f["updated"]),
            f["name"],
            json.dumps(f.get("tags") or []),
        )
        for f in dataset.flows
    ]


def _deployment_rows(dataset: Dataset) -> list[tuple[Any, ...]]:
    return [
        (
            uuid.UUID(d["id"]),
            _time(d["created"]),
            _time(d["updated"]),
            d["name"],
            uuid.UUID(d["flow_id"]),
            json.dumps(d.get("tags") or []),
            bool(d.get("paused", False)),
            d.get("work_queue_name"),
            d.get("concurrency_limit"),
        )
        for d in dataset.deployments
    ]


def _flow_run_rows(dataset: Dataset) -> list[tuple[Any, ...]]:
    return [
        (
            uuid.UUID(r["id"]),
            _time(r["created"]),
            _time(r["updated"]),
            r["name"],
            uuid.UUID(r["flow_id"]),
            _uuid(r.get("deployment_id")),
            r.get("work_queue_name"),
            r.get("flow_version"),
            json.dumps(r.get("tags") or []),
            r.get("state_type"),
            r.get("state_name"),
            _time(r.get("start_time")),
            _time(r.get("end_time")),
            _time(r.get("expected_start_time")),
            _time(r.get("next_scheduled_start_time")),
            _uuid(r.get("parent_task_run_id")),
            r.get("idempotency_key"),
            _json(r.get("created_by")),
        )
        for r in dataset.flow_runs
    ]


def _task_run_rows(dataset: Dataset) -> list[tuple[Any, ...]]:
    return [
        (
            uuid.UUID(t["id"]),
            _time(t["created"]),
            _time(t["updated"]),
            t["name"],
            _uuid(t.get("flow_run_id")),
            json.dumps(t.get("tags") or []),
            t.get("state_type"),
            t.get("state_name"),
            _time(t.get("start_time")),
            _time(t.get("end_time")),
            _time(t.get("expected_start_time")),
            t["name"],  # task_key
            t["id"],  # dynamic_key: unique, so (flow_run_id, task_key, dynamic_key) is too
        )
        for t in dataset.task_runs
    ]


def _artifact_rows(artifacts: Sequence[JsonDict]) -> list[tuple[Any, ...]]:
    return [
        (
            uuid.UUID(a["id"]),
            _time(a["created"]),
            _time(a["updated"]),
            a.get("key"),
            a.get("type"),
            a.get("description"),
            _json(a.get("data")),
            _json(a.get("metadata_")),
            _uuid(a.get("flow_run_id")),
            _uuid(a.get("task_run_id")),
        )
        for a in artifacts
    ]


def _collection_rows(collections: Sequence[JsonDict]) -> list[tuple[Any, ...]]:
    return [
        (
            uuid.UUID(c["id"]),
            _time(c["created"]),
            _time(c["updated"]),
            c["key"],
            uuid.UUID(c["latest_id"]),
            c.get("type"),
            c.get("description"),
            _json(c.get("data")),
            _json(c.get("metadata_")),
            _uuid(c.get("flow_run_id")),
            _uuid(c.get("task_run_id")),
        )
        for c in collections
    ]


_TABLES: dict[str, tuple[str, ...]] = {
    "flow": ("id", "created", "updated", "name", "tags"),
    "deployment": (
        "id",
        "created",
        "updated",
        "name",
        "flow_id",
        "tags",
        "paused",
        "work_queue_name",
        "concurrency_limit",
    ),
    "flow_run": (
        "id",
        "created",
        "updated",
        "name",
        "flow_id",
        "deployment_id",
        "work_queue_name",
        "flow_version",
        "tags",
        "state_type",
        "state_name",
        "start_time",
        "end_time",
        "expected_start_time",
        "next_scheduled_start_time",
        "parent_task_run_id",
        "idempotency_key",
        "created_by",
    ),
    "task_run": (
        "id",
        "created",
        "updated",
        "name",
        "flow_run_id",
        "tags",
        "state_type",
        "state_name",
        "start_time",
        "end_time",
        "expected_start_time",
        "task_key",
        "dynamic_key",
    ),
    "artifact": (
        "id",
        "created",
        "updated",
        "key",
        "type",
        "description",
        "data",
        "metadata_",
        "flow_run_id",
        "task_run_id",
    ),
    "artifact_collection": (
        "id",
        "created",
        "updated",
        "key",
        "latest_id",
        "type",
        "description",
        "data",
        "metadata_",
        "flow_run_id",
        "task_run_id",
    ),
}

# Types of the columns that asyncpg cannot infer from a Python str.
_CASTS = {
    "tags": "jsonb",
    "created_by": "jsonb",
    "data": "json",
    "metadata_": "json",
    "state_type": "state_type",
}

# Foreign keys between the tables we load. The event contract lets references
# dangle (a flow run whose flow was deleted, a subflow whose parent task run is
# gone, ...), so they are dropped; Prefect's queries never rely on them.
_DROP_FOREIGN_KEYS = """
DO $$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT conrelid::regclass AS tbl, conname
    FROM pg_constraint
    WHERE contype = 'f'
      AND conrelid::regclass::text IN
          ('flow', 'deployment', 'flow_run', 'task_run', 'artifact', 'artifact_collection')
  LOOP
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
  END LOOP;
END $$;
"""


async def load_dataset(conn: asyncpg.Connection, dataset: Dataset) -> None:
    """Insert every surviving entity and the derived collections (one transaction)."""
    rows: dict[str, list[tuple[Any, ...]]] = {
        "flow": _flow_rows(dataset),
        "deployment": _deployment_rows(dataset),
        "flow_run": _flow_run_rows(dataset),
        "task_run": _task_run_rows(dataset),
        "artifact": _artifact_rows(dataset.artifacts),
        "artifact_collection": _collection_rows(compute_collections(dataset.artifacts)),
    }
    async with conn.transaction():
        await conn.execute(_DROP_FOREIGN_KEYS)
        for table, columns in _TABLES.items():
            if not rows[table]:
                continue
            placeholders = ", ".join(
                f"${i}::{_CASTS[c]}" if c in _CASTS else f"${i}"
                for i, c in enumerate(columns, start=1)
            )
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
            await conn.executemany(sql, rows[table])
        await conn.execute("ANALYZE")


# --- the oracle ----------------------------------------------------------------------


class PrefectOracle:
    """Prefect 3.9.1's REST API over a throw-away PostgreSQL database."""

    def __init__(self, dsn: str, dataset: Dataset, *, database: str | None = None) -> None:
        self.dsn = dsn
        self.dataset = dataset
        self.database = database or f"prefect_oracle_{uuid.uuid4().hex[:16]}"
        self.database_dsn = _with_database(dsn, self.database)
        self.connection_url = _sqlalchemy_url(self.database_dsn)
        self.timings = OracleTimings()
        self._client: httpx.AsyncClient | None = None
        self._created = False

    # -- lifecycle --

    async def __aenter__(self) -> PrefectOracle:
        if _ACTIVE:
            raise RuntimeError("only one PrefectOracle can be open per process")
        _ACTIVE.append(self)
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        started = time.perf_counter()
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute(
                f'CREATE DATABASE "{self.database}" TEMPLATE template0 '
                "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            )
            self._created = True
        finally:
            await admin.close()
        self.timings.create_database = time.perf_counter() - started

        _prepare_environment(self.connection_url)
        _use_database(self.connection_url)
        from prefect.server.database import provide_database_interface

        started = time.perf_counter()
        await provide_database_interface().create_db()
        self.timings.migrations = time.perf_counter() - started

        started = time.perf_counter()
        conn = await asyncpg.connect(self.database_dsn)
        try:
            await load_dataset(conn, self.dataset)
        finally:
            await conn.close()
        self.timings.load = time.perf_counter() - started

        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=_app()), base_url=BASE_URL
        )

    async def _stop(self) -> None:
        try:
            if self._client is not None:
                await self._client.aclose()
                self._client = None
            await _dispose_engines(self.connection_url)
            _forget_database()
            if self._created:
                admin = await asyncpg.connect(self.dsn)
                try:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
                finally:
                    await admin.close()
                self._created = False
        finally:
            if self in _ACTIVE:
                _ACTIVE.remove(self)

    # -- requests --

    @property
    def app(self) -> FastAPI:
        """Prefect's ASGI application (routes under ``/api``), for an in-process client."""
        if self._client is None:
            raise RuntimeError("the oracle is not open")
        return _app()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the oracle is not open")
        return self._client

    async def post(self, path: str, json: Any = None) -> tuple[int, Any]:
        """POST ``json`` to ``/api{path}``; returns (status, decoded JSON body or None)."""
        response = await self.client.post(path if path.startswith("/") else "/" + path, json=json)
        return response.status_code, _decode(response)

    async def get(self, path: str) -> tuple[int, Any]:
        response = await self.client.get(path if path.startswith("/") else "/" + path)
        return response.status_code, _decode(response)

    async def request(
        self, method: str, path: str, *, content: bytes | None = None, json: Any = None
    ) -> httpx.Response:
        """Any request, raw (for malformed bodies, headers, ...)."""
        return await self.client.request(method, path, content=content, json=json)


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text

"""Fixtures of the sync tier: Prefect databases on a PostgreSQL with wal_level=logical.

The server comes from the root conftest's `postgres_dsn` (POSTGRES_DSN, which `make test`
sets to the server deploy/local/servers.sh starts with wal_level=logical). Prefect's own
migrations build a template database once per server (about 40 s); each test clones it
(`CREATE DATABASE ... TEMPLATE`, under a second) and drops its clone and its slots after.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.backfill import connect
from services.config import KafkaSettings
from services.contract import ENTITIES
from services.prefect.tables import TABLES, row_to_data, select_list
from tests.conformance.oracle import _sqlalchemy_url as sqlalchemy_url
from tests.conformance.oracle import _with_database as with_database

TEMPLATE = "sync_prefect_3_9_1_template"


def prefect_cli() -> str:
    """The `prefect` command of this interpreter's environment."""
    return str(Path(sys.executable).with_name("prefect"))


def clean_env() -> dict[str, str]:
    """This process's environment without Prefect's settings (the conformance oracle sets
    some process-wide, e.g. its task-run recorder off)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def prefect_env(database_dsn: str, home: str) -> dict[str, str]:
    """Environment of a Prefect process on `database_dsn`."""
    url = sqlalchemy_url(database_dsn)
    return {
        **clean_env(),
        "PREFECT_HOME": home,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": url,
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }


async def read_rows(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the five tables as its contract `data`, by table."""
    conn = await connect(dsn)
    try:
        return {
            t: [row_to_data(t, r) for r in await conn.fetch(f"SELECT {select_list(t)} FROM {t}")]
            for t in TABLES
        }
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def logical_dsn(postgres_dsn: str) -> str:
    """The test server, refused with a clear message unless wal_level=logical."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        wal_level = await conn.fetchval("SHOW wal_level")
    finally:
        await conn.close()
    if wal_level != "logical":
        pytest.fail(
            f"the PostgreSQL at POSTGRES_DSN runs with wal_level={wal_level}; tests/sync need "
            "wal_level=logical: restart it with deploy/local/servers.sh (stop pg, start pg), "
            "which sets it, or point POSTGRES_DSN at such a server",
            pytrace=False,
        )
    return postgres_dsn


async def _migrated(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(with_database(dsn, TEMPLATE))
    except asyncpg.InvalidCatalogNameError:
        return False
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM alembic_version"))
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


async def ensure_template(dsn: str) -> str:
    """The name of a database migrated by Prefect 3.9.1 itself on the server at `dsn`
    (created the first time, about 40 s); `RuntimeError` when Prefect's migrations fail."""
    if await _migrated(dsn):
        return TEMPLATE
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        await admin.execute(
            f'CREATE DATABASE "{TEMPLATE}" TEMPLATE template0 '
            "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    finally:
        await admin.close()
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as home:
        proc = await asyncio.create_subprocess_exec(
            prefect_cli(),
            "server",
            "database",
            "upgrade",
            "-y",
            env=prefect_env(with_database(dsn, TEMPLATE), home),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"Prefect's migrations failed:\n{out.decode()[-3000:]}")
    return TEMPLATE


@pytest.fixture(scope="session")
async def prefect_template(logical_dsn: str) -> str:
    """A database migrated by Prefect 3.9.1 itself, to clone."""
    try:
        return await ensure_template(logical_dsn)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a test database and the replication slots in it."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        for _ in range(50):
            slots = await admin.fetch(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = $1", name
            )
            if not slots:
                break
            for slot in slots:
                if slot["active_pid"] is not None:
                    await admin.execute("SELECT pg_terminate_backend($1, 5000)", slot["active_pid"])
                try:
                    await admin.execute("SELECT pg_drop_replication_slot($1)", slot["slot_name"])
                except asyncpg.PostgresError:
                    await asyncio.sleep(0.1)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def clone_database(admin_dsn: str, template: str, name: str) -> None:
    """Create database `name` as a copy of `template` (retried while another session is
    cloning the template)."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        for attempt in range(20):
            try:
                await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                return
            except asyncpg.ObjectInUseError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()


@pytest.fixture
async def prefect_db(logical_dsn: str, prefect_template: str) -> AsyncIterator[str]:
    """The DSN of a fresh, migrated, empty Prefect database."""
    name = f"sync_{uuid.uuid4().hex[:10]}"
    await clone_database(logical_dsn, prefect_template, name)
    try:
        yield with_database(logical_dsn, name)
    finally:
        await drop_database(logical_dsn, name)


@pytest.fixture
async def sync_kafka(kafka_bootstrap: str, unique_name: str) -> AsyncIterator[KafkaSettings]:
    """Kafka settings with this test's own five topics (and dead-letter topic)."""
    kafka = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=f"{unique_name}.", group_id=unique_name
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    topics = [kafka.topic_for(e) for e in ENTITIES] + [kafka.dlq_topic]
    try:
        await admin.create_topics([NewTopic(t, 3, 1) for t in topics])
        yield kafka
    finally:
        await admin.delete_topics(topics)
        await admin.close()


class TopicLog:
    """Everything published to the five topics, read from the beginning, in offset order."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.records: list[dict[str, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicLog:
        self._consumer = AIOKafkaConsumer(
            *[self.kafka.topic_for(e) for e in ENTITIES],
            bootstrap_servers=self.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def poll(self) -> None:
        """Read what has arrived."""
        assert self._consumer is not None
        for msgs in (await self._consumer.getmany(timeout_ms=200)).values():
            for m in msgs:
                assert m.key is not None and m.value is not None
                value = orjson.loads(m.value)
                assert value["entity_id"] == m.key.decode()
                self.records.append(value)

    async def until(self, check: Callable[[], bool], seconds: float, what: str) -> None:
        """Poll until `check()` holds, or fail saying `what` did not happen."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            await self.poll()
            if check():
                return
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"{what} within {seconds}s ({len(self.records)} records)")

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The highest-version event of every entity (what the indexer ends with)."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.records:
            key = (r["entity"], r["entity_id"])
            if key not in out or r["version"] > out[key]["version"]:
                out[key] = r
        return out

    def versions_never_go_back(self) -> None:
        """Per entity, versions in partition order never decrease, except when a restart
        re-sends its unconfirmed tail: a lower version then is one already sent."""
        top: dict[tuple[str, str], int] = {}
        seen: dict[tuple[str, str], set[int]] = {}
        for r in self.records:
            key, version = (r["entity"], r["entity_id"]), r["version"]
            if version < top.get(key, 0):
                assert version in seen[key], (key, version, top[key])
            top[key] = max(top.get(key, 0), version)
            seen.setdefault(key, set()).add(version)

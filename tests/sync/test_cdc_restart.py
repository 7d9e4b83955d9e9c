"""sync-prefect across a real PostgreSQL restart: the bridge streams from a private cluster
(wal_level=logical) while a writer commits changes; the cluster is stopped (fast shutdown:
every connection, the walsender's too, is cut) and started again; the writer goes on after
the restart. The bridge reconnects by itself and resumes from its slot's confirmed
position: every change before and after reaches the topics, no second snapshot, and an
event sent twice (the tail not yet confirmed) is the same event: same version, same content.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.config import KafkaSettings
from tests.conformance.oracle import _with_database as with_database
from tests.sync.conftest import TopicLog
from tests.sync.private_postgres import PrivatePostgres
from tests.sync.test_cdc_bridge import bridge_running, converged, options, seed


@pytest.fixture
async def private_prefect_db(
    prefect_template: str, logical_dsn: str
) -> AsyncIterator[tuple[PrivatePostgres, str]]:
    """A private cluster holding an empty Prefect database (schema of the template)."""
    cluster = PrivatePostgres()
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        source = with_database(logical_dsn, prefect_template)
        await asyncio.to_thread(cluster.copy_schema, source, "prefect")
        yield cluster, with_database(cluster.dsn, "prefect")
    finally:
        await asyncio.to_thread(cluster.destroy)


class Writer:
    """Commits small transactions (new artifacts, a flow run renamed, some deletes) one
    after another, reconnecting while PostgreSQL is down; counts its commits."""

    def __init__(self, dsn: str, flow_run: str) -> None:
        self.dsn = dsn
        self.flow_run = flow_run
        self.commits = 0
        self.failures = 0
        self.made: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        conn: asyncpg.Connection | None = None
        i = 0
        while not stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=5)
                await self._one(conn, i)
                self.commits += 1
                i += 1
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,  # a connection cut mid-operation
                TimeoutError,
            ):
                # a commit cut by the shutdown may or may not have happened: the test
                # compares the topics with the database as it finally is
                self.failures += 1
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.01)
        if conn is not None:
            await conn.close()

    async def _one(self, conn: asyncpg.Connection, i: int) -> None:
        async with conn.transaction():
            aid = str(uuid.uuid4())
            await conn.execute(
                "INSERT INTO artifact (id, key, type, data, flow_run_id) "
                "VALUES ($1, $2, 'progress', to_json($3::float), $4)",
                aid,
                f"k{i % 5}",
                float(i),
                self.flow_run,
            )
            if i % 3 == 0:
                await conn.execute(
                    "UPDATE flow_run SET name = $2 WHERE id = $1", self.flow_run, f"run-{i}"
                )
            if i % 4 == 0 and self.made:
                await conn.execute("DELETE FROM artifact WHERE id = $1", self.made.pop(0))
        self.made.append(aid)


def reconnects() -> float:
    return REGISTRY.get_sample_value("sync_prefect_reconnects_total") or 0.0


@pytest.mark.timeout(300)
async def test_postgres_restart_mid_stream_resumes_from_the_slot(
    private_prefect_db: tuple[PrivatePostgres, str],
    sync_kafka: KafkaSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster, dsn = private_prefect_db
    conn = await asyncpg.connect(dsn)
    ids = await seed(conn)
    await conn.close()
    opts = options(tmp_path, "s_restart")
    async with TopicLog(sync_kafka) as topics:
        async with bridge_running(sync_kafka, dsn, opts) as bridge:
            await converged(topics, dsn)
            snapshot = len(topics.records)
            writer = Writer(dsn, ids["flow_run"])
            stop_writing = asyncio.Event()
            writing = asyncio.create_task(writer.run(stop_writing))
            try:
                # changes before the restart, some of them streamed and confirmed
                await topics.until(lambda: len(topics.records) >= snapshot + 40, 60, "no stream")
                before = reconnects()
                confirmed = bridge._window.confirmed
                assert confirmed is not None
                commits = writer.commits
                await asyncio.to_thread(cluster.stop, "fast")
                await asyncio.to_thread(cluster.start)
                # changes after the restart
                await _until(lambda: writer.commits >= commits + 40, 60, "no writes after")
            finally:
                stop_writing.set()
                await writing
            assert writer.failures >= 1  # the writer did see PostgreSQL go away
            await converged(topics, dsn, seconds=90)
            assert reconnects() > before
            assert "sync session failed, reconnecting" in caplog.text
            assert "reconnected after" in caplog.text
        # one snapshot: the restart resumed from the slot, it did not take another
        snapshot_versions = {r["version"] for r in topics.records[:snapshot]}
        assert len(snapshot_versions) == 1
        assert sum(r["version"] in snapshot_versions for r in topics.records) == snapshot
        # the unconfirmed tail may be sent again (the slot's confirmed position reaches the
        # server on psycopg2's status interval, and PostgreSQL 15 persists it at checkpoints
        # only): a re-sent event is the same event, never a snapshot row
        seen: dict[tuple[str, str, int], dict[str, object]] = {}
        for record in topics.records:
            key = (record["entity"], record["entity_id"], record["version"])
            if key in seen:
                assert record["version"] > max(snapshot_versions), key
                assert record == seen[key]
            seen[key] = record
        # and the slot moved on from where it was before the restart
        conn = await asyncpg.connect(dsn)
        try:
            after = await conn.fetchval(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
                "WHERE slot_name = 's_restart'"
            )
        finally:
            await conn.close()
        assert int(after) > confirmed
        topics.versions_never_go_back()


async def _until(check: object, seconds: float, what: str) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what} within {seconds}s")
        await asyncio.sleep(0.1)

"""sync-prefect says what to fix when PostgreSQL is not ready for change data capture."""

from __future__ import annotations

from typing import Any

import pytest

from services.errors import BackendUnavailableError
from services.sync.postgres import (
    SlotInfo,
    SlotMissingError,
    SyncSetupError,
    check_server,
    check_slot,
    classify_stream_error,
    replication_dsn,
)

TABLES_ROWS = [
    {"table_name": t, "readable": True}
    for t in ("flow", "deployment", "flow_run", "task_run", "artifact")
]


class FakeConn:
    """What check_server reads, as asyncpg would return it."""

    def __init__(self, tables: list[dict[str, Any]] = TABLES_ROWS, **server: Any) -> None:
        self.server = {
            "version": 150000,
            "wal_level": "logical",
            "slots": 10,
            "database": "prefect",
            "who": "prefect",
            "superuser": False,
            "replication": True,
            **server,
        }
        self.tables = tables

    async def fetchrow(self, *_: Any) -> dict[str, Any]:
        return self.server

    async def fetch(self, *_: Any) -> list[dict[str, Any]]:
        return self.tables


async def test_a_ready_server_passes() -> None:
    assert await check_server(FakeConn(), "public") == (150000, "prefect", "prefect")


@pytest.mark.parametrize(
    ("conn", "says"),
    [
        (FakeConn(wal_level="replica"), "wal_level=logical"),
        (FakeConn(slots=1), "max_replication_slots is 1"),
        (FakeConn(replication=False), 'ALTER ROLE "prefect" WITH REPLICATION'),
        (FakeConn(version=90600), "PostgreSQL 10 or newer"),
        (FakeConn(tables=TABLES_ROWS[:4]), "has no table artifact"),
        (
            FakeConn(tables=[*TABLES_ROWS[:4], {"table_name": "artifact", "readable": False}]),
            "GRANT SELECT ON public.artifact",
        ),
    ],
)
async def test_each_refusal_names_its_fix(conn: FakeConn, says: str) -> None:
    with pytest.raises(SyncSetupError, match=says):
        await check_server(conn, "public")


def test_slots_that_cannot_be_streamed() -> None:
    good = SlotInfo("s", "pgoutput", "prefect", None, 100, False)
    check_slot(good, "prefect")
    with pytest.raises(SyncSetupError, match="not a pgoutput slot"):
        check_slot(SlotInfo("s", "test_decoding", "prefect", None, 100, False), "prefect")
    with pytest.raises(SlotMissingError, match="--recreate-slot"):
        check_slot(SlotInfo("s", "pgoutput", "prefect", None, 100, True), "prefect")
    with pytest.raises(SyncSetupError, match="in use"):
        check_slot(SlotInfo("s", "pgoutput", "prefect", 4242, 100, False), "prefect")


class PgError(Exception):
    def __init__(self, text: str, pgcode: str | None) -> None:
        super().__init__(text)
        self.pgcode = pgcode


def test_stream_errors_are_sorted() -> None:
    missing = classify_stream_error(PgError('replication slot "s" does not exist', "42704"), "s")
    assert isinstance(missing, SlotMissingError) and "--recreate-slot" in str(missing)
    assert isinstance(classify_stream_error(PgError("x", "55006"), "s"), SyncSetupError)
    broken = classify_stream_error(PgError("server closed the connection", None), "s")
    assert isinstance(broken, BackendUnavailableError)


def test_replication_dsn_forces_iso_utc_and_keeps_user_options() -> None:
    params = replication_dsn("postgresql+asyncpg://u:p@db:5433/prefect?options=-c%20x%3D1")
    assert params["host"] == "db" and params["port"] == "5433" and params["dbname"] == "prefect"
    assert params["options"].startswith("-c x=1 ") and "TimeZone=UTC" in params["options"]

"""Adapter: Prefect's PostgreSQL database as a snapshot and a stream of committed changes.

Two drivers, each for what it does best: asyncpg for SQL (checks, publication, slot
administration, the snapshot's reads; the same code `backfill-prefect` uses), psycopg2
for the replication protocol (`LogicalReplicationConnection`: CREATE_REPLICATION_SLOT with
an exported snapshot, START_REPLICATION, standby status updates). psycopg 3 and asyncpg
do not implement the replication protocol's streaming (docs/adr/0007).

Every refusal the operator has to act on is a `SyncSetupError` whose message says what to
do; a connection that breaks is a `BackendUnavailableError` (the bridge reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from services.backfill import asyncpg_dsn, connect, read_chunks
from services.errors import BackendUnavailableError
from services.prefect.tables import TABLES, select_list
from services.sync.errors import SyncSetupError as SyncSetupError  # re-exported
from services.sync.pgoutput import str_to_lsn

log = logging.getLogger("sync.postgres")

#: the replication connection's session: timestamps in ISO and UTC, as decode_text expects
SESSION_OPTIONS = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres"
#: how the bridge's connections show in pg_stat_activity (unless the DSN names one)
APPLICATION_NAME = "artifact-search-sync"


class SlotMissingError(SyncSetupError):
    """The slot that held the stream's position is gone: changes may have been lost."""


@dataclass(frozen=True)
class ServerInfo:
    """What the checks found."""

    version_num: int
    database: str
    user: str
    system_id: str


@dataclass(frozen=True)
class SlotInfo:
    """A row of pg_replication_slots."""

    name: str
    plugin: str | None
    database: str | None
    active_pid: int | None
    confirmed_flush: int | None
    lost: bool


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _recreate_hint(slot: str) -> str:
    return (
        "rerun with --recreate-slot: it creates the slot again and publishes a new snapshot "
        f"(rows deleted while slot {slot!r} was missing stay in the index until it is rebuilt; "
        "README, 'Live sync from Prefect')"
    )


async def sql_connect(dsn: str) -> Any:
    """An asyncpg connection, or `BackendUnavailableError`/`SyncSetupError` saying why not."""
    import asyncpg

    try:
        return await connect(dsn, APPLICATION_NAME)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise SyncSetupError(f"PostgreSQL refused the credentials: {exc}") from exc
    except asyncpg.InvalidCatalogNameError as exc:
        raise SyncSetupError(f"no such database: {exc}") from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise BackendUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc


async def check_server(conn: Any, schema: str) -> tuple[int, str, str]:
    """wal_level, the role's attributes and the tables; (version, database, user) or a
    `SyncSetupError` naming the fix."""
    row = await conn.fetchrow(
        "SELECT current_setting('server_version_num')::int AS version, "
        "current_setting('wal_level') AS wal_level, "
        "current_setting('max_replication_slots')::int AS slots, "
        "current_database() AS database, current_user AS who, "
        "r.rolsuper AS superuser, r.rolreplication AS replication "
        "FROM pg_roles r WHERE r.rolname = current_user"
    )
    if row["version"] < 100000:
        raise SyncSetupError("PostgreSQL 10 or newer is needed (pgoutput, temporary slots)")
    if row["wal_level"] != "logical":
        raise SyncSetupError(
            f"PostgreSQL runs with wal_level={row['wal_level']}; logical replication needs "
            "wal_level=logical. Set it (ALTER SYSTEM SET wal_level = logical, or in "
            "postgresql.conf; also max_replication_slots >= 2 and max_wal_senders >= 2) "
            "and restart PostgreSQL."
        )
    if row["slots"] < 2:
        raise SyncSetupError(
            f"max_replication_slots is {row['slots']}: the bridge needs 2 (its slot, and a "
            "temporary one while it takes a snapshot); raise it and restart PostgreSQL"
        )
    if not (row["superuser"] or row["replication"]):
        raise SyncSetupError(
            f"role {row['who']!r} may not use logical replication: "
            f"ALTER ROLE {_quote(row['who'])} WITH REPLICATION (as a superuser)"
        )
    found = {
        r["table_name"]: r["readable"]
        for r in await conn.fetch(
            "SELECT c.relname AS table_name, has_table_privilege(c.oid, 'SELECT') AS readable "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind = 'r'",
            schema,
            list(TABLES),
        )
    }
    missing = [t for t in TABLES if t not in found]
    if missing:
        raise SyncSetupError(
            f"schema {schema!r} of database {row['database']!r} has no table "
            f"{', '.join(missing)}: is this Prefect 3.x's database (migrated)?"
        )
    unreadable = [t for t in TABLES if not found[t]]
    if unreadable:
        raise SyncSetupError(
            f"role {row['who']!r} may not read {', '.join(unreadable)}: GRANT SELECT ON "
            + ", ".join(f"{schema}.{t}" for t in unreadable)
            + f" TO {_quote(row['who'])}"
        )
    return int(row["version"]), str(row["database"]), str(row["who"])


PUBLISH = "insert, update, delete, truncate"
"""What the publication sends: every row change, and TRUNCATEs (published as deletes)."""


async def ensure_publication(conn: Any, name: str, schema: str) -> bool:
    """The publication of the five tables exists (created when missing) and publishes
    TRUNCATEs (altered when it does not, or a warning saying what to run); True if
    created."""
    import asyncpg

    tables = ", ".join(f"{_quote(schema)}.{_quote(t)}" for t in TABLES)
    row = await conn.fetchrow("SELECT pubtruncate FROM pg_publication WHERE pubname = $1", name)
    exists = row is not None
    if exists and not row["pubtruncate"]:
        # a publication of an earlier version of the bridge, or made by hand
        statement = f"ALTER PUBLICATION {_quote(name)} SET (publish = '{PUBLISH}')"
        try:
            await conn.execute(statement)
            log.info("publication %s now publishes TRUNCATE", name)
        except asyncpg.InsufficientPrivilegeError as exc:
            log.warning(
                "publication %s does not publish TRUNCATE and this role may not change it "
                "(%s): a TRUNCATE of Prefect's tables will not reach the index; have its "
                "owner run: %s",
                name,
                exc,
                statement,
            )
    if not exists:
        statement = (
            f"CREATE PUBLICATION {_quote(name)} FOR TABLE {tables} WITH (publish = '{PUBLISH}')"
        )
        try:
            await conn.execute(statement)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise SyncSetupError(
                f"cannot create publication {name!r} ({exc}); have the tables' owner or a "
                f"superuser run: {statement}"
            ) from exc
        log.info("created publication %s", name)
        return True
    published = {
        r["tablename"]
        for r in await conn.fetch(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2",
            name,
            schema,
        )
    }
    missing = [t for t in TABLES if t not in published]
    if missing:
        raise SyncSetupError(
            f"publication {name!r} lacks {', '.join(missing)}: ALTER PUBLICATION "
            f"{_quote(name)} ADD TABLE "
            + ", ".join(f"{_quote(schema)}.{_quote(t)}" for t in missing)
        )
    return False


async def slot_info(conn: Any, name: str, version_num: int) -> SlotInfo | None:
    """The slot's row, or None when it does not exist."""
    lost = "wal_status = 'lost'" if version_num >= 130000 else "false"
    row = await conn.fetchrow(
        "SELECT plugin, database, active_pid, confirmed_flush_lsn::text AS confirmed, "
        f"{lost} AS lost FROM pg_replication_slots WHERE slot_name = $1",
        name,
    )
    if row is None:
        return None
    confirmed = row["confirmed"]
    return SlotInfo(
        name,
        row["plugin"],
        row["database"],
        row["active_pid"],
        str_to_lsn(confirmed) if confirmed else None,
        bool(row["lost"]),
    )


def check_slot(slot: SlotInfo, database: str) -> None:
    """A slot the bridge can stream from, or a `SyncSetupError` saying why not."""
    if slot.plugin != "pgoutput" or slot.database != database:
        raise SyncSetupError(
            f"replication slot {slot.name!r} exists but is not a pgoutput slot of database "
            f"{database!r} (plugin {slot.plugin}, database {slot.database}): choose another "
            "--slot, or drop it (SELECT pg_drop_replication_slot(...)) if it is unused"
        )
    if slot.lost:
        raise SlotMissingError(
            f"replication slot {slot.name!r} is invalidated: PostgreSQL removed WAL it still "
            f"needed (max_slot_wal_keep_size); {_recreate_hint(slot.name)}"
        )
    if slot.active_pid is not None:
        raise SyncSetupError(
            f"replication slot {slot.name!r} is in use by the PostgreSQL backend "
            f"{slot.active_pid}: another bridge runs on it (stop it, or choose another --slot)"
        )


async def create_slot(conn: Any, name: str) -> int:
    """Create the persistent slot; its LSN."""
    import asyncpg

    try:
        lsn = await conn.fetchval(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", name
        )
    except asyncpg.DuplicateObjectError as exc:
        raise SyncSetupError(f"replication slot {name!r} appeared meanwhile: {exc}") from exc
    except asyncpg.ConfigurationLimitExceededError as exc:
        raise SyncSetupError(
            f"no free replication slot ({exc}): raise max_replication_slots and restart "
            "PostgreSQL, or drop unused slots"
        ) from exc
    log.info("created replication slot %s at %s", name, lsn)
    return str_to_lsn(str(lsn))


async def drop_slot(conn: Any, name: str) -> None:
    """Drop the slot (it must not be in use)."""
    import asyncpg

    try:
        await conn.execute("SELECT pg_drop_replication_slot($1)", name)
    except asyncpg.ObjectInUseError as exc:
        raise SyncSetupError(f"replication slot {name!r} is in use: {exc}") from exc
    except asyncpg.UndefinedObjectError:
        return
    log.warning("dropped replication slot %s", name)


# ---- the replication protocol (psycopg2) --------------------------------------------------


def replication_dsn(dsn: str) -> dict[str, Any]:
    """psycopg2 connection arguments: the user's DSN plus the session options."""
    from psycopg2.extensions import parse_dsn

    params: dict[str, Any] = dict(parse_dsn(asyncpg_dsn(dsn)))
    params["options"] = f"{params.get('options', '')} {SESSION_OPTIONS}".strip()
    params.setdefault("application_name", APPLICATION_NAME)
    return params


def _describe(exc: Exception) -> str:
    return " ".join(str(exc).split())


def replication_connect(dsn: str) -> Any:
    """A psycopg2 `LogicalReplicationConnection` (blocking; call it in a thread)."""
    import psycopg2
    from psycopg2.extras import LogicalReplicationConnection

    try:
        return psycopg2.connect(
            connection_factory=LogicalReplicationConnection, **replication_dsn(dsn)
        )
    except psycopg2.OperationalError as exc:
        text = _describe(exc)
        if "superuser or replication role" in text or "no pg_hba.conf entry for replication" in (
            text
        ):
            raise SyncSetupError(
                f"PostgreSQL refused a replication connection: {text}. The role needs the "
                "REPLICATION attribute, and pg_hba.conf must allow it to connect to this "
                "database"
            ) from exc
        if "password authentication failed" in text:
            raise SyncSetupError(f"PostgreSQL refused the credentials: {text}") from exc
        raise BackendUnavailableError(f"cannot open a replication connection: {text}") from exc


def identify_system(conn: Any) -> str:
    """The cluster's system identifier (IDENTIFY_SYSTEM)."""
    cur = conn.cursor()
    cur.execute("IDENTIFY_SYSTEM")
    row = cur.fetchone()
    return str(row[0])


def create_snapshot_slot(conn: Any, name: str) -> tuple[int, str]:
    """A temporary slot with an exported snapshot: (consistent point, snapshot name).

    The snapshot is the database exactly as of the consistent point: every transaction
    that committed before it is in, none after. It stays importable while `conn` runs no
    other command; the slot vanishes with `conn`.
    """
    import psycopg2

    cur = conn.cursor()
    try:
        cur.execute(
            f"CREATE_REPLICATION_SLOT {_quote(name)} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        )
    except psycopg2.Error as exc:
        if getattr(exc, "pgcode", None) == "53400":
            raise SyncSetupError(
                f"no free replication slot for the snapshot ({_describe(exc)}): the bridge "
                "needs 2; raise max_replication_slots and restart PostgreSQL"
            ) from exc
        raise BackendUnavailableError(f"cannot create the snapshot slot: {exc}") from exc
    row = cur.fetchone()
    return str_to_lsn(row[1]), str(row[2])


@contextlib.asynccontextmanager
async def snapshot_reader(dsn: str, snapshot: str) -> AsyncIterator[Any]:
    """An asyncpg connection in a read-only REPEATABLE READ transaction on `snapshot`."""
    conn = await sql_connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            yield conn
    finally:
        await conn.close()


async def count_rows(conn: Any) -> dict[str, int]:
    """Rows per table (in the reader's snapshot)."""
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}


async def read_table(conn: Any, table: str, chunk: int) -> AsyncIterator[list[Any]]:
    """The table's rows in id order, `chunk` at a time (backfill's keyset pagination)."""
    async for rows in read_chunks(conn, table, None, chunk):
        yield rows


async def read_row(conn: Any, table: str, entity_id: str) -> Any:
    """The current row of one entity, or None."""
    return await conn.fetchrow(
        f"SELECT {select_list(table)} FROM {table} WHERE id = $1::uuid", entity_id
    )


class ReplicationStream:
    """START_REPLICATION on a psycopg2 connection, read without blocking the event loop.

    `messages()` yields raw `pgoutput` payloads with their WAL positions; `confirm(lsn)`
    records the flushed position, which psycopg2 sends in its periodic status updates
    (and `flush()` sends at once).
    """

    def __init__(self, conn: Any, status_interval: float = 1.0) -> None:
        self.conn = conn
        self.cur = conn.cursor()
        self.status_interval = status_interval

    def start(self, slot: str, publication: str) -> None:
        """Begin streaming from the slot's confirmed position (blocking, brief)."""
        import psycopg2

        try:
            self.cur.start_replication(
                slot_name=slot,
                decode=False,
                options={"proto_version": "1", "publication_names": publication},
                status_interval=self.status_interval,
            )
        except psycopg2.Error as exc:
            raise classify_stream_error(exc, slot) from exc

    def read(self) -> tuple[bytes, int] | None:
        """The next message (payload, data_start) if one is buffered, else None."""
        import psycopg2

        try:
            msg = self.cur.read_message()
        except psycopg2.Error as exc:
            raise classify_stream_error(exc, None) from exc
        if msg is None:
            return None
        return bytes(msg.payload), int(msg.data_start)

    def confirm(self, lsn: int, force: bool = False) -> None:
        """Everything up to `lsn` is safely in Kafka."""
        import psycopg2

        try:
            self.cur.send_feedback(flush_lsn=lsn, force=force)
        except psycopg2.Error as exc:
            raise classify_stream_error(exc, None) from exc

    def keepalive(self) -> None:
        """A status update now (while the bridge waits on Kafka and reads nothing)."""
        import psycopg2

        try:
            self.cur.send_feedback(force=True)
        except psycopg2.Error as exc:
            raise classify_stream_error(exc, None) from exc

    @property
    def wal_end(self) -> int:
        """The server's WAL end as of the last message or keepalive."""
        return int(self.cur.wal_end)

    def fileno(self) -> int:
        """The socket, for the event loop's reader."""
        return int(self.conn.fileno())

    def close(self) -> None:
        """Close the connection (the server ends the walsender)."""
        with contextlib.suppress(Exception):
            self.conn.close()


def classify_stream_error(exc: Exception, slot: str | None) -> Exception:
    """A psycopg2 error of the replication stream -> the project's error tree."""
    code = getattr(exc, "pgcode", None)
    text = _describe(exc)
    if code == "42704" or ("does not exist" in text and "replication slot" in text):
        name = slot or "?"
        return SlotMissingError(
            f"replication slot {name!r} does not exist ({text}); {_recreate_hint(name)}"
        )
    if code == "55006":
        return SyncSetupError(f"the replication slot is in use by another process: {text}")
    if code == "42501":
        return SyncSetupError(f"PostgreSQL refused replication: {text}")
    if code == "55000" and "wal_level" in text:
        return SyncSetupError(f"{text}: set wal_level=logical and restart PostgreSQL")
    return BackendUnavailableError(f"the replication stream broke: {text}")


async def wait_readable(fileno: int, seconds: float) -> None:
    """Wait until the socket is readable, at most `seconds`."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fileno, wake)
    try:
        await asyncio.wait_for(ready, seconds)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fileno)


def in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking psycopg2 call off the event loop."""
    return asyncio.to_thread(func, *args)

"""`sync-prefect`'s loop: snapshot, then stream, into Kafka; the slot confirmed behind Kafka.

One session (reconnected with backoff after a transient failure):

1. checks (wal_level, role, tables), the publication (created when missing), the slot
   (created when missing; a missing slot that a previous run streamed from is an error);
2. unless the state file says this slot's snapshot was published: a temporary slot with an
   exported snapshot, every row read in that snapshot and published with the snapshot's
   version, then the state file marks the snapshot complete;
3. START_REPLICATION on the slot from its confirmed position: each committed transaction
   becomes events (services/sync/changes.py), sent by an idempotent producer (acks=all)
   with at most `max_in_flight` unacknowledged; the slot is told an LSN only once Kafka
   acknowledged every event up to it (services/sync/window.py).

The persistent slot exists before the snapshot's temporary slot, so streaming it from its
confirmed position covers every change the snapshot missed, and a change the snapshot
already holds is older by version: no gap, no loss, at-least-once (docs/adr/0007).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.config import KafkaSettings
from services.errors import BackendUnavailableError
from services.kafka import BULK_BATCH_BYTES, producer_kwargs
from services.prefect.tables import TABLES, row_to_data
from services.progress import Progress
from services.sync import metrics
from services.sync.changes import (
    ChangeDecoder,
    ContractEvent,
    Refetch,
    Transaction,
    snapshot_event,
    truncate_deletes,
)
from services.sync.pgoutput import Commit, lsn_to_str, parse_message
from services.sync.postgres import (
    ReplicationStream,
    SlotMissingError,
    SyncSetupError,
    check_server,
    check_slot,
    count_rows,
    create_slot,
    create_snapshot_slot,
    drop_slot,
    ensure_publication,
    identify_system,
    in_thread,
    read_row,
    read_table,
    replication_connect,
    slot_info,
    snapshot_reader,
    sql_connect,
    wait_readable,
)
from services.sync.state import SyncState
from services.sync.topic_keys import read_latest
from services.sync.window import AckWindow

log = logging.getLogger("sync")

#: failures that a new session may not meet again: reconnect with backoff
TRANSIENT = (
    BackendUnavailableError,
    KafkaError,
    OSError,
    asyncpg.PostgresConnectionError,  # class 08: the connection broke
    asyncpg.OperatorInterventionError,  # class 57: shutdown, crash, starting up
    asyncpg.InterfaceError,  # the connection is closed
)


@dataclass(frozen=True)
class SyncOptions:
    """How the bridge names things on PostgreSQL and paces itself."""

    slot: str = "artifact_search"
    publication: str = "artifact_search"
    schema: str = "public"
    state_path: Path | None = Path("prefect-sync.state.json")
    recreate_slot: bool = False
    max_in_flight: int = 10_000
    snapshot_chunk: int = 1000
    status_interval_s: float = 1.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    report_every_s: float = 30.0

    def __post_init__(self) -> None:
        if self.status_interval_s < 1:
            raise ValueError("status_interval_s must be at least 1 (psycopg2's minimum)")


class Bridge:
    """Keeps the entity topics in step with one Prefect database."""

    def __init__(
        self,
        kafka: KafkaSettings,
        dsn: str,
        options: SyncOptions,
        *,
        progress_stream: TextIO | None = None,
        on_ready: Callable[[bool], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.dsn = dsn
        self.options = options
        self.progress_stream = progress_stream
        self.on_ready = on_ready or (lambda _: None)
        self.published = 0  # events Kafka acknowledged, this process
        self._recreated = False
        self._failure: BaseException | None = None
        self._window = AckWindow()
        self._last_delay = 0.0
        self._failed_sessions = 0  # since streaming last started
        metrics.LAG.set_function(self._lag)

    # ---- the session loop ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; `SyncSetupError` (and bugs) end it, transient failures
        reconnect with backoff."""
        delay = self.options.retry_initial_s
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop)
            except TRANSIENT as exc:
                self.on_ready(False)
                metrics.RECONNECTS.inc()
                self._failed_sessions += 1
                if time.monotonic() - started > 60:
                    delay = self.options.retry_initial_s  # it had been working
                log.warning("sync session failed, reconnecting in %.1fs: %s", delay, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random()))
                delay = min(delay * 2, self.options.retry_max_s)
        self.on_ready(False)

    async def _session(self, stop: asyncio.Event) -> None:
        opts = self.options
        metrics.PHASE.set(0)
        sql = await sql_connect(self.dsn)
        producer: AIOKafkaProducer | None = None
        try:
            version, database, _ = await check_server(sql, opts.schema)
            await ensure_publication(sql, opts.publication, opts.schema)
            repl = await in_thread(replication_connect, self.dsn)
            try:
                system_id = await in_thread(identify_system, repl)
            finally:
                repl.close()
            state = await self._prepare_slot(sql, version, database, system_id)
            producer = AIOKafkaProducer(
                **producer_kwargs(self.kafka),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_batch_size=BULK_BATCH_BYTES,
            )
            await producer.start()
            if state is None:
                state = SyncState(opts.slot, system_id, database)
                state.save(opts.state_path)
                await self._snapshot(producer, state)
            await self._stream(sql, producer, stop)
        finally:
            with contextlib.suppress(Exception):
                if producer is not None:
                    await producer.stop()
            with contextlib.suppress(Exception):
                await sql.close()

    async def _prepare_slot(
        self, sql: Any, version: int, database: str, system_id: str
    ) -> SyncState | None:
        """The slot to stream from exists; the state if its snapshot is already out."""
        opts = self.options
        state = SyncState.load(opts.state_path)
        slot = await slot_info(sql, opts.slot, version)
        if opts.recreate_slot and not self._recreated:
            if slot is not None:
                if slot.active_pid is not None:
                    raise SyncSetupError(
                        f"replication slot {opts.slot!r} is in use by the PostgreSQL backend "
                        f"{slot.active_pid}: stop the bridge running on it first"
                    )
                await drop_slot(sql, opts.slot)
            slot, state = None, None
            self._recreated = True
        if slot is None:
            if (
                state is not None
                and state.snapshot_complete
                and state.same_source(opts.slot, system_id, database)
            ):
                raise SlotMissingError(
                    f"replication slot {opts.slot!r} does not exist, but {opts.state_path} "
                    "says this bridge streamed from it: it was dropped (or PostgreSQL "
                    "restored from a backup), so changes since its last position may be "
                    "lost. Rerun with --recreate-slot: it creates the slot again and "
                    "publishes a new snapshot (rows deleted meanwhile stay in the index "
                    "until it is rebuilt; README, 'Live sync from Prefect')"
                )
            await create_slot(sql, opts.slot)
            return None
        check_slot(slot, database)
        if (
            state is None
            or not state.snapshot_complete
            or not state.same_source(opts.slot, system_id, database)
        ):
            log.info("slot %s exists but its snapshot is not complete: taking one", opts.slot)
            return None
        return state

    # ---- snapshot ----------------------------------------------------------------------

    async def _snapshot(self, producer: AIOKafkaProducer, state: SyncState) -> None:
        opts = self.options
        metrics.PHASE.set(1)
        temp = f"{opts.slot}_snapshot"[:63]
        repl = await in_thread(replication_connect, self.dsn)
        try:
            point, snapshot = await in_thread(create_snapshot_slot, repl, temp)
            log.info("snapshot %s at %s", snapshot, lsn_to_str(point))
            async with snapshot_reader(self.dsn, snapshot) as reader:
                totals = await count_rows(reader)
                for table, n in totals.items():
                    metrics.SNAPSHOT_TOTAL.labels(table).set(n)
                    metrics.SNAPSHOT_ROWS.labels(table).set(0)
                progress = Progress("snapshot", sum(totals.values()), self.progress_stream)
                progress.update(0, force=True)
                done = 0
                for table in TABLES:
                    topic = self.kafka.topic_for(table)
                    async for rows in read_table(reader, table, opts.snapshot_chunk):
                        pending = []
                        for row in rows:
                            event = snapshot_event(table, row, point)
                            pending.append(
                                await producer.send(
                                    topic, value=event.encode(), key=event.entity_id.encode()
                                )
                            )
                        await asyncio.gather(*pending)
                        metrics.EVENTS.labels(table, "upsert", "snapshot").inc(len(rows))
                        metrics.SNAPSHOT_ROWS.labels(table).inc(len(rows))
                        done += len(rows)
                        self.published += len(rows)
                        progress.update(done, note=table)
                progress.finish()
        finally:
            repl.close()  # drops the temporary slot
        state.snapshot_complete = True
        state.snapshot_lsn = lsn_to_str(point)
        state.snapshot_rows = done
        state.save(opts.state_path)
        log.info("snapshot published: %d rows at %s", done, lsn_to_str(point))

    # ---- streaming ---------------------------------------------------------------------

    async def _stream(self, sql: Any, producer: AIOKafkaProducer, stop: asyncio.Event) -> None:
        opts = self.options
        conn = await in_thread(replication_connect, self.dsn)
        stream = ReplicationStream(conn, opts.status_interval_s)
        self._window = window = AckWindow()
        self._failure = None
        try:
            await in_thread(stream.start, opts.slot, opts.publication)
            decoder = ChangeDecoder(opts.schema)
            metrics.PHASE.set(2)
            self.on_ready(True)
            if self._failed_sessions:
                log.warning(
                    "reconnected after %d failed session(s): streaming from slot %s again, "
                    "from its confirmed position",
                    self._failed_sessions,
                    opts.slot,
                )
                self._failed_sessions = 0
            else:
                log.info("streaming from slot %s", opts.slot)
            reported, reported_count = time.monotonic(), self.published
            since_yield, last_keepalive = 0, time.monotonic()
            while not stop.is_set():
                self._raise_failure()
                if window.in_flight >= opts.max_in_flight:
                    # back-pressure: read nothing until Kafka catches up (PostgreSQL keeps
                    # the WAL), and keep the walsender from timing out meanwhile
                    now = time.monotonic()
                    if now - last_keepalive >= opts.status_interval_s:
                        stream.keepalive()
                        last_keepalive = now
                    await asyncio.sleep(0.05)
                    self._confirm(stream, window)
                    continue
                item = stream.read()
                if item is None:
                    self._confirm(stream, window)
                    await wait_readable(stream.fileno(), opts.status_interval_s)
                    now = time.monotonic()
                    if now - reported >= opts.report_every_s:
                        rate = (self.published - reported_count) / (now - reported)
                        log.info(
                            "streaming: %.1f events/s, lag %.2fs, confirmed %s",
                            rate,
                            self._lag(),
                            lsn_to_str(window.confirmed or 0),
                        )
                        reported, reported_count = now, self.published
                    continue
                message = parse_message(item[0])
                transaction = decoder.feed(message)
                if isinstance(message, Commit):
                    await self._publish(sql, producer, message, transaction, stream)
                since_yield += 1
                if since_yield >= 500:  # let acknowledgements run during a burst
                    since_yield = 0
                    await asyncio.sleep(0)
                    self._confirm(stream, window)
            await self._drain(producer, stream, window)
        finally:
            self.on_ready(False)
            await in_thread(stream.close)

    async def _publish(
        self,
        sql: Any,
        producer: AIOKafkaProducer,
        commit: Commit,
        transaction: Transaction | None,
        stream: ReplicationStream,
    ) -> None:
        window = self._window
        if transaction is None:
            window.add(commit.end_lsn, commit.commit_time, 0)
            return
        events: list[ContractEvent] = []
        if transaction.truncated:
            events.extend(await self._truncate_deletes(producer, transaction, stream))
        for change in transaction.changes:
            if isinstance(change, Refetch):
                event = await self._refetch(sql, change)
                if event is not None:
                    events.append(event)
            else:
                events.append(change)
        window.add(transaction.end_lsn, transaction.commit_time, len(events))
        for event in events:
            future = await producer.send(
                self.kafka.topic_for(event.entity),
                value=event.encode(),
                key=event.entity_id.encode(),
            )
            future.add_done_callback(self._acked(transaction.end_lsn, event, commit.commit_time))

    async def _truncate_deletes(
        self, producer: AIOKafkaProducer, transaction: Transaction, stream: ReplicationStream
    ) -> list[ContractEvent]:
        """A delete for every entity of each truncated table that its topic holds as live.

        Everything published before is acknowledged first (so the topic's read includes
        it); the topic is read from the beginning to its end offsets (docs/adr/0007), with
        status updates meanwhile so the walsender does not time out on a long read."""
        await producer.flush()
        self._raise_failure()
        last = time.monotonic()

        def keepalive() -> None:
            nonlocal last
            if time.monotonic() - last >= self.options.status_interval_s:
                stream.keepalive()
                last = time.monotonic()

        out: list[ContractEvent] = []
        for table in transaction.truncated:
            latest = await read_latest(self.kafka, table, keepalive)
            deletes = truncate_deletes(table, latest, transaction)
            metrics.TRUNCATES.labels(table).inc()
            log.warning(
                "TRUNCATE of %s at %s: publishing deletes for the %d entities its topic "
                "holds as live",
                table,
                lsn_to_str(transaction.end_lsn),
                len(deletes),
            )
            out.extend(deletes)
        return out

    async def _refetch(self, sql: Any, change: Refetch) -> ContractEvent | None:
        metrics.REFETCHES.inc()
        row = await read_row(sql, change.entity, change.entity_id)
        if row is None:  # deleted since: its delete is further down the stream
            return None
        data = row_to_data(change.entity, row)
        return ContractEvent(
            change.entity, change.entity_id, "upsert", change.version, change.occurred, data
        )

    def _acked(
        self, end_lsn: int, event: ContractEvent, committed: datetime
    ) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                self._failure = self._failure or BackendUnavailableError("send cancelled")
                return
            exc = future.exception()
            if exc is not None:
                self._failure = self._failure or exc
                return
            self._window.ack(end_lsn)
            self.published += 1
            metrics.EVENTS.labels(event.entity, event.op, "stream").inc()
            self._last_delay = max(0.0, (datetime.now(UTC) - committed).total_seconds())

        return done

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            if isinstance(failure, KafkaError | BackendUnavailableError):
                raise BackendUnavailableError(f"Kafka refused an event: {failure!r}") from failure
            raise failure

    def _confirm(self, stream: ReplicationStream, window: AckWindow, force: bool = False) -> None:
        lsn = window.advance()
        metrics.IN_FLIGHT.set(window.in_flight)
        if lsn is not None:
            stream.confirm(lsn, force=force)
            metrics.CONFIRMED_LSN.set(lsn)
        elif force and window.confirmed is not None:
            stream.confirm(window.confirmed, force=True)

    async def _drain(
        self, producer: AIOKafkaProducer, stream: ReplicationStream, window: AckWindow
    ) -> None:
        """On stop: wait (bounded) for the acknowledgements in flight, confirm, report."""
        with contextlib.suppress(TimeoutError, KafkaError):
            await asyncio.wait_for(producer.flush(), 30)
        await asyncio.sleep(0)  # the acknowledgement callbacks
        self._confirm(stream, window, force=True)
        log.info("stopped at %s", lsn_to_str(window.confirmed or 0))

    def _lag(self) -> float:
        oldest = self._window.oldest_pending()
        if oldest is None:
            return self._last_delay
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds())


async def drop_sync_slot(dsn: str, slot: str) -> bool:
    """Drop the bridge's slot (for `--drop-slot` when retiring the bridge); True if it
    existed."""
    sql = await sql_connect(dsn)
    try:
        version = int(await sql.fetchval("SELECT current_setting('server_version_num')::int"))
        info = await slot_info(sql, slot, version)
        if info is None:
            return False
        await drop_slot(sql, slot)
        return True
    finally:
        await sql.close()


__all__ = ["Bridge", "SyncOptions", "drop_sync_slot"]

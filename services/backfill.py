"""Publish an existing Prefect server's state as v1 events, read from its PostgreSQL database.

For each table in dependency order (flow, deployment, flow_run, task_run,
artifact) the rows are read in keyset-paginated chunks (`WHERE id > $last ORDER
BY id LIMIT n`, on the primary key), turned into the `data` snapshot the
contract asks for, and published as `upsert` envelopes whose `version` is the
microseconds since the epoch of the row's `updated` (what live producers send,
so a live event for a newer state still wins and an older one still loses).
Collections are derived by the indexer and never published. The tables' columns and
the row -> `data` rule are shared with `sync-prefect` (services/prefect/tables.py).

Resumable: after every chunk is acknowledged by Kafka (acks=all) the checkpoint
file records the last `(table, id)` done; a rerun continues after it. A chunk's
acknowledgements are awaited while the next one is read and sent (one chunk in flight). Republishing
a chunk after a crash is harmless (same version: idempotent redelivery).
Rate-limited by a token bucket (`max_events_per_second`, 0 = unlimited).

Only database mode exists; reading through Prefect's REST API is not implemented.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaProducer
from aiolimiter import AsyncLimiter

from services.config import KafkaSettings
from services.contract import ENTITIES, encode_event
from services.documents import to_micros
from services.kafka import BULK_BATCH_BYTES, producer_kwargs
from services.prefect.tables import row_to_data, select_list
from services.progress import Progress

log = logging.getLogger("backfill")


def asyncpg_dsn(dsn: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+asyncpg://`) as Prefect configures them."""
    for driver in ("+asyncpg", "+psycopg2", "+psycopg"):
        dsn = dsn.replace(f"postgresql{driver}://", "postgresql://", 1)
    return dsn


@dataclass
class Checkpoint:
    """The last `(table, id)` published and acknowledged; `complete` after the last table."""

    table: str | None = None
    last_id: str | None = None
    published: int = 0
    complete: bool = False

    @classmethod
    def load(cls, path: Path | None) -> Checkpoint:
        """The saved checkpoint, or a fresh one when there is none."""
        if path is None or not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(raw.get("table"), raw.get("last_id"), raw.get("published", 0), raw["complete"])

    def save(self, path: Path | None) -> None:
        """Write atomically (rename), so a crash never leaves a torn file."""
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "table": self.table,
                    "last_id": self.last_id,
                    "published": self.published,
                    "complete": self.complete,
                }
            )
        )
        os.replace(tmp, path)


class RateLimiter:
    """`rate` events per second with one second of burst (aiolimiter's leaky bucket);
    0 (or infinity) is unlimited."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._bucket = AsyncLimiter(rate, 1) if 0 < rate < math.inf else None

    async def take(self, n: int = 1) -> None:
        """Wait until `n` events may go (more than a second's worth: in several drips)."""
        if self._bucket is None:
            return
        left = float(n)
        while left > 0:
            drip = min(left, self.rate)  # the bucket holds at most one second's worth
            await self._bucket.acquire(drip)
            left -= drip


@dataclass
class BackfillResult:
    """What one run published (this run only) and where it stopped."""

    published: dict[str, int] = field(default_factory=dict)
    total_published: int = 0
    complete: bool = False
    resumed_from: tuple[str, str | None] | None = None
    seconds: float = 0.0


async def read_chunks(
    conn: Any, table: str, after: str | None, size: int
) -> Any:  # AsyncIterator[list[Record]]
    """The table's rows after id `after` (None: from the first), `size` at a time, in id
    order (keyset pagination on the primary key)."""
    cols = select_list(table)
    while True:
        if after is None:
            rows = await conn.fetch(f"SELECT {cols} FROM {table} ORDER BY id LIMIT $1", size)
        else:
            rows = await conn.fetch(
                f"SELECT {cols} FROM {table} WHERE id > $1::uuid ORDER BY id LIMIT $2",
                after,
                size,
            )
        if not rows:
            return
        yield rows
        after = str(rows[-1]["id"])
        if len(rows) < size:
            return


async def connect(dsn: str, application_name: str = "artifact-search-backfill") -> Any:
    """An asyncpg connection to the Prefect database that decodes json/jsonb."""
    import asyncpg

    conn = await asyncpg.connect(
        asyncpg_dsn(dsn), server_settings={"application_name": application_name}
    )
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


async def backfill(
    kafka: KafkaSettings,
    dsn: str,
    *,
    checkpoint_path: Path | None,
    chunk_size: int = 1000,
    max_events_per_second: float = 0.0,
    entities: tuple[str, ...] = ENTITIES,
    restart: bool = False,
    stream: TextIO | None = None,
) -> BackfillResult:
    """Publish every row of the selected tables, resuming after the checkpoint."""
    started = time.monotonic()
    tables = [e for e in ENTITIES if e in entities]
    checkpoint = Checkpoint() if restart else Checkpoint.load(checkpoint_path)
    result = BackfillResult(total_published=checkpoint.published)
    if checkpoint.complete:
        result.complete = True
        log.info("checkpoint says the backfill is complete; nothing to do (use --restart)")
        return result
    if checkpoint.table is not None:
        result.resumed_from = (checkpoint.table, checkpoint.last_id)
    conn = await connect(dsn)
    producer = AIOKafkaProducer(
        **producer_kwargs(kafka),
        acks="all",
        linger_ms=20,
        enable_idempotence=True,
        max_batch_size=BULK_BATCH_BYTES,
    )
    limiter = RateLimiter(max_events_per_second)
    producing = False
    try:
        totals = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}
        await producer.start()
        producing = True
        skip = tables.index(checkpoint.table) if checkpoint.table in tables else 0
        done_before = sum(totals[t] for t in tables[:skip])
        progress = Progress("backfill", sum(totals.values()), stream)
        progress.update(done_before, force=True)

        async def settle(table: str, futures: list[asyncio.Future[Any]], last_id: str) -> None:
            """Kafka acknowledged a whole chunk: only then does the checkpoint move past it."""
            nonlocal done_before
            await asyncio.gather(*futures)
            checkpoint.table, checkpoint.last_id = table, last_id
            checkpoint.published += len(futures)
            checkpoint.save(checkpoint_path)
            result.published[table] = result.published.get(table, 0) + len(futures)
            done_before += len(futures)
            progress.update(done_before, note=f"{table} {last_id}")

        for table in tables[skip:]:
            after = checkpoint.last_id if table == checkpoint.table else None
            if after is not None:
                done_before += int(
                    await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id <= $1::uuid", after)
                )
            topic = kafka.topic_for(table)
            # a chunk's acknowledgements are awaited while the next chunk is read and sent
            unacked: tuple[list[asyncio.Future[Any]], str] | None = None
            async for rows in read_chunks(conn, table, after, chunk_size):
                pending = []
                for row in rows:
                    await limiter.take()
                    updated: datetime = row["updated"]
                    data = row_to_data(table, row)
                    value = encode_event(
                        table, data["id"], "upsert", to_micros(updated), data, occurred=updated
                    )
                    pending.append(await producer.send(topic, value=value, key=data["id"].encode()))
                if unacked is not None:
                    await settle(table, *unacked)
                unacked = (pending, str(rows[-1]["id"]))
            if unacked is not None:
                await settle(table, *unacked)
            next_index = tables.index(table) + 1
            checkpoint.table = tables[next_index] if next_index < len(tables) else table
            checkpoint.last_id = None if next_index < len(tables) else checkpoint.last_id
            checkpoint.save(checkpoint_path)
        checkpoint.complete = True
        checkpoint.save(checkpoint_path)
        progress.finish()
        result.complete = True
        result.total_published = checkpoint.published
        return result
    finally:
        result.seconds = time.monotonic() - started
        try:
            if producing:
                await producer.stop()
        finally:
            await conn.close()

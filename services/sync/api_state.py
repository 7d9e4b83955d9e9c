"""The API mode's checkpoint: what was published for every entity, and the event position.

A SQLite file (the standard library's `sqlite3`; one row per entity ever published, so a
million artifacts stay a few hundred megabytes on disk, not in memory). Rows are written
only after Kafka acknowledged their events, in one transaction per batch, so a crash at
any point leaves the store behind Kafka, never ahead: the next run publishes again what
it cannot prove was published (at-least-once; the same event id, the indexer drops it).

It answers the three questions the API cannot:
- the last version of an entity (versions must grow, and a delete has no `updated`);
- whether a snapshot changed since it was published (its digest);
- which ids were published as live, so a reconcile pass finds those that vanished;
- per collection, the newest `updated` a pass listed: where an incremental pass stops.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from services.sync.api_plan import Published, Ref, parse_time
from services.sync.errors import SyncSetupError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS published (
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    digest TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ApiSyncStore:
    """The checkpoint of one API-mode bridge (one Prefect workspace, one set of topics)."""

    def __init__(self, path: Path | None, source: str) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:")
        self._db.executescript(_SCHEMA)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        known = self.get_meta("source")
        if known is None:
            self.set_meta({"source": source})
        elif known != source:
            self.close()
            raise SyncSetupError(
                f"the state file {path} belongs to a bridge of {known}, not {source}: give "
                "this Prefect its own --state-file (and its own topics)"
            )

    def close(self) -> None:
        """Close the database file."""
        self._db.close()

    def get_meta(self, key: str) -> str | None:
        """One checkpoint value."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, values: dict[str, str]) -> None:
        """Set checkpoint values atomically."""
        with self._db:
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    @property
    def snapshot_complete(self) -> bool:
        """Whether a first reconcile pass published everything Prefect listed."""
        return self.get_meta("snapshot_complete") == "true"

    def mark_snapshot_complete(self) -> None:
        """Record that the initial pass finished."""
        self.set_meta({"snapshot_complete": "true"})

    @property
    def event_position(self) -> datetime | None:
        """The `occurred` up to which every Prefect event's reads were published."""
        value = self.get_meta("event_position")
        return None if value is None else parse_time(value)

    def save_event_position(self, position: datetime) -> None:
        """Move the event position (callers never move it back)."""
        self.set_meta({"event_position": position.isoformat()})

    def high_water(self) -> dict[str, datetime]:
        """Per collection, the newest `updated` a reconcile pass listed (the incremental
        passes list back to it, minus an overlap)."""
        rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'high_water.%'")
        return {str(k).split(".", 1)[1]: parse_time(str(v)) for k, v in rows}

    def save_high_water(self, entity: str, mark: datetime) -> None:
        """Record a collection's high-water mark (callers never move it back)."""
        self.set_meta({f"high_water.{entity}": mark.isoformat()})

    def get(self, refs: Iterable[Ref]) -> dict[Ref, Published]:
        """What was published last for each of `refs` that has ever been published."""
        out: dict[Ref, Published] = {}
        for ref in refs:
            row = self._db.execute(
                "SELECT version, updated_us, digest, deleted FROM published "
                "WHERE entity = ? AND id = ?",
                (ref.entity, ref.id),
            ).fetchone()
            if row is not None:
                out[ref] = Published(int(row[0]), int(row[1]), str(row[2]), bool(row[3]))
        return out

    def record(self, published: Iterable[tuple[Ref, Published]]) -> None:
        """Record acknowledged events, in one transaction."""
        with self._db:
            self._db.executemany(
                "INSERT INTO published (entity, id, version, updated_us, digest, deleted) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (entity, id) DO UPDATE SET "
                "version = excluded.version, updated_us = excluded.updated_us, "
                "digest = excluded.digest, deleted = excluded.deleted",
                [
                    (r.entity, r.id, p.version, p.updated_us, p.digest, int(p.deleted))
                    for r, p in published
                ],
            )

    def live_ids(self, entity: str) -> set[str]:
        """Ids of `entity` whose last published event is an upsert."""
        rows = self._db.execute(
            "SELECT id FROM published WHERE entity = ? AND deleted = 0", (entity,)
        )
        return {str(r[0]) for r in rows}

    def counts(self) -> dict[str, int]:
        """Live entities published, by entity (for the log)."""
        rows = self._db.execute(
            "SELECT entity, count(*) FROM published WHERE deleted = 0 GROUP BY entity"
        )
        return {str(r[0]): int(r[1]) for r in rows}

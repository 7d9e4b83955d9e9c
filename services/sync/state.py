"""The bridge's state file: which slot it streams from and whether its snapshot is out.

The slot itself keeps the stream's position (its confirmed LSN, on the PostgreSQL server);
the file only records what the slot cannot: that the snapshot of this database was
published completely, through which slot, on which PostgreSQL cluster. With it the
bridge can tell a first run (take the snapshot) from a slot that disappeared (an error:
changes may have been lost). Written atomically (rename), so a crash never tears it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class SyncState:
    """What a previous run completed."""

    slot: str
    system_id: str
    database: str
    snapshot_complete: bool = False
    snapshot_lsn: str | None = None
    snapshot_rows: int = 0

    @classmethod
    def load(cls, path: Path | None) -> SyncState | None:
        """The saved state, or None when there is none."""
        if path is None or not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(
            slot=raw["slot"],
            system_id=raw["system_id"],
            database=raw["database"],
            snapshot_complete=bool(raw.get("snapshot_complete", False)),
            snapshot_lsn=raw.get("snapshot_lsn"),
            snapshot_rows=int(raw.get("snapshot_rows", 0)),
        )

    def save(self, path: Path | None) -> None:
        """Write atomically."""
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def same_source(self, slot: str, system_id: str, database: str) -> bool:
        """Whether this state describes that slot of that database on that cluster."""
        return (self.slot, self.system_id, self.database) == (slot, system_id, database)

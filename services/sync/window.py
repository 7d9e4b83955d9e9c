"""PURE: which LSN may be confirmed to the replication slot, given Kafka's acknowledgements.

Transactions enter in commit order with the number of events they published; Kafka
acknowledges events in any order. The slot may be told "flushed up to L" only when every
transaction ending at or before L has had all its events acknowledged, so the window
confirms the longest fully acknowledged prefix. Everything after it is sent again after a
restart (at-least-once; the indexer ignores what it already has by version).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class _Entry:
    end_lsn: int
    commit_time: datetime
    outstanding: int


class AckWindow:
    """The transactions published and not yet confirmed, oldest first."""

    def __init__(self) -> None:
        self._entries: deque[_Entry] = deque()
        self._by_lsn: dict[int, _Entry] = {}
        self.in_flight = 0
        self.confirmed: int | None = None

    def add(self, end_lsn: int, commit_time: datetime, events: int) -> None:
        """A transaction whose `events` were handed to Kafka (0: nothing to publish)."""
        if self._entries and end_lsn <= self._entries[-1].end_lsn:
            raise ValueError("transactions must be added in commit order")
        entry = _Entry(end_lsn, commit_time, events)
        self._entries.append(entry)
        self._by_lsn[end_lsn] = entry
        self.in_flight += events

    def ack(self, end_lsn: int) -> None:
        """Kafka acknowledged one event of the transaction ending at `end_lsn`."""
        entry = self._by_lsn[end_lsn]
        if entry.outstanding <= 0:
            raise ValueError(f"more acknowledgements than events at {end_lsn}")
        entry.outstanding -= 1
        self.in_flight -= 1

    def advance(self) -> int | None:
        """Drop the fully acknowledged prefix; the new LSN to confirm, or None if unchanged."""
        moved = None
        while self._entries and self._entries[0].outstanding == 0:
            entry = self._entries.popleft()
            del self._by_lsn[entry.end_lsn]
            moved = entry.end_lsn
        if moved is not None:
            self.confirmed = moved
        return moved

    def oldest_pending(self) -> datetime | None:
        """Commit time of the oldest transaction not yet confirmed (for the lag metric)."""
        return self._entries[0].commit_time if self._entries else None

    def __len__(self) -> int:
        return len(self._entries)

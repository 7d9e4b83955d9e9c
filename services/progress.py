"""A dependency-free progress bar on stderr for long CLI operations (replay, backfill).

On a terminal it redraws one line in place; otherwise (a Job's log, a pipe) it
prints a plain line at most every `every_s` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts work done against an (estimated) total and renders it."""

    def __init__(
        self,
        label: str,
        total: int | None,
        stream: TextIO | None = None,
        every_s: float = 5.0,
        unit: str = "events",
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = 0.2 if self.tty else every_s
        self.unit = unit
        self.done = 0
        self.note = ""
        self.started = time.monotonic()
        self._last = 0.0

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The current progress line (no newline)."""
        rate = f"{self.rate():,.0f} {self.unit}/s"
        extra = f"  {self.note}" if self.note else ""
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            return (
                f"{self.label} [{bar:<30}] {frac * 100:5.1f}% "
                f"{self.done:,}/{self.total:,} {self.unit}  {rate}{extra}"
            )
        return f"{self.label} {self.done:,} {self.unit}  {rate}{extra}"

    def update(self, done: int, note: str | None = None, force: bool = False) -> None:
        """Set the amount done; redraw when due."""
        self.done = done
        if note is not None:
            self.note = note
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self, note: str | None = None) -> None:
        """Draw the final state and end the line."""
        if self.total is not None:
            self.total = max(self.total, self.done)
        self.update(self.done, note, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

"""Progress of long CLI operations (replay, backfill, snapshots) on stderr, drawn by tqdm.

On a terminal tqdm redraws one line in place. Elsewhere (a Job's log, a pipe) a line
redrawn with carriage returns would reach a log collector as one entry at the very end,
so the same line is printed whole, at most every `every_s` seconds (tqdm's own
`mininterval` throttling), and the log stays readable line by line.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


class _LineTqdm(tqdm):  # type: ignore[type-arg]
    """tqdm printing each refresh as a whole line instead of redrawing it in place."""

    _shown: tuple[object, ...] = ()

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        if msg == "":  # tqdm clearing its line on close: nothing to clear in a log
            return
        shown = (self.n, self.total, self.postfix)
        if msg is None and shown == self._shown:  # a forced redraw of what is printed
            return
        self._shown = shown
        self.fp.write((msg if msg is not None else str(self)) + "\n")
        self.fp.flush()


class Progress:
    """Counts work done against an (estimated) total and renders it.

    The interface takes absolute amounts (`update(done)`), which is what the callers
    know; tqdm's increments are derived from them.
    """

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
        self.unit = unit
        self.done = 0
        counted = f" {{n:,}}/{{total:,}} {unit}" if total else f" {{n:,}} {unit}"
        bar = " [{bar:30}] {percentage:5.1f}%" if total else ""
        kwargs: dict[str, Any] = {
            "total": total or None,
            "desc": label,
            "file": self.stream,
            "unit": f" {unit}",
            "ascii": " #",
            "unit_scale": True,  # 3.80k events/s; the counts are printed unscaled
            "smoothing": 0,  # the rate since the start
            "bar_format": "{desc}" + bar + counted + "  {rate_fmt}{postfix}",
        }
        if self.tty:
            self._bar: tqdm[Any] = tqdm(mininterval=0.2, leave=True, **kwargs)
        else:
            self._bar = _LineTqdm(mininterval=every_s, leave=False, **kwargs)

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = self._bar.format_dict["elapsed"]
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The current progress line (no newline)."""
        self._bar.n = self.done
        return str(self._bar)

    def update(self, done: int, note: str | None = None, force: bool = False) -> None:
        """Set the amount done; redraw when due (always when `force`)."""
        if note is not None:
            self._bar.set_postfix_str(note, refresh=False)
        if self.total is not None and done > self.total:
            self.total = done
            self._bar.total = done
        self._bar.update(done - self._bar.n)
        self.done = done
        if force:
            self._bar.refresh()

    def finish(self, note: str | None = None) -> None:
        """Draw the final state and end the line."""
        self.update(self.done, note, force=True)
        self._bar.close()

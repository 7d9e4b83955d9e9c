"""The progress display of long CLI operations, off a terminal (a Job's log, a pipe)."""

from __future__ import annotations

import io

from services.progress import Progress


def test_off_a_terminal_each_redraw_is_a_whole_line_and_the_last_one_says_done() -> None:
    out = io.StringIO()
    progress = Progress("backfill", 1_000, out, every_s=0.0)
    progress.update(0, force=True)
    progress.update(500, note="artifact 12")
    progress.done = 1_000
    progress.finish()

    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("backfill [") and "0/1,000 events" in lines[0]
    assert any("500/1,000 events" in line and "artifact 12" in line for line in lines)
    assert lines[-1].startswith("backfill [" + "#" * 30 + "] 100.0% 1,000/1,000 events")
    assert sum(" 0/1,000 events" in line for line in lines) == 1  # a forced redraw of the same


def test_more_done_than_estimated_raises_the_total_instead_of_passing_100_percent() -> None:
    out = io.StringIO()
    progress = Progress("snapshot", 10, out, every_s=0.0, unit="entities")
    progress.update(25, force=True)
    progress.finish()
    assert out.getvalue().splitlines()[-1].split("]")[1].startswith(" 100.0% 25/25 entities")


def test_without_a_total_it_counts_and_is_throttled_by_the_interval() -> None:
    out = io.StringIO()
    progress = Progress("replay", None, out, every_s=3600.0)
    for done in range(1, 1_001):
        progress.update(done)
    progress.finish("poison 0")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first draw and the final one: the hour never passed
    assert lines[-1].startswith("replay 1,000 events") and lines[-1].endswith("poison 0")

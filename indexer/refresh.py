"""Written documents made searchable soon after Elasticsearch acknowledged them.

Elasticsearch makes writes searchable at its periodic refresh (`refresh_interval`, 1 s):
a write waits half a second for it on average, a whole one at worst, and that wait was
the largest part of the indexer's publish -> searchable time at a steady rate
(docs/benchmarks/RESULTS.md, *Freshness*). The `Refresher` refreshes the indices a step
wrote right after its writes were acknowledged, at most once every `interval_s`:

- requests are coalesced: every index written since the last refresh, in one `_refresh`;
- a step never waits for it (it runs in its own task, off the chain of steps and commits);
- the processor does not ask while a backlog is consumed (a step that defers documents,
  docs/propagation.md), when throughput matters more than a second of visibility;
- a failed refresh is logged and forgotten: the periodic refresh still makes the
  writes searchable within `refresh_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from indexer import metrics

log = logging.getLogger("indexer.refresh")


class Refresher:
    """Coalesced, rate-limited `_refresh` of the indices written (Elasticsearch adapter:
    `refresh` is called with a comma-separated list of index names)."""

    def __init__(
        self,
        refresh: Callable[[str], Awaitable[object]],
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.refresh = refresh
        self.interval_s = interval_s
        self.clock = clock
        self.sleep = sleep
        self.pending: set[str] = set()
        self.refreshes = 0
        self._wake = asyncio.Event()
        self._last = -float("inf")

    def request(self, indices: Iterable[str]) -> None:
        """Ask for these indices to be refreshed (returns at once)."""
        self.pending.update(indices)
        if self.pending:
            self._wake.set()

    async def run(self) -> None:
        """Refresh what was requested, at most once every `interval_s` (until cancelled)."""
        while True:
            await self._wake.wait()
            delay = self._last + self.interval_s - self.clock()
            if delay > 0:  # requests arriving meanwhile join this refresh
                await self.sleep(delay)
            self._wake.clear()
            indices, self.pending = self.pending, set()
            self._last = self.clock()
            await self._refresh(indices)

    async def _refresh(self, indices: set[str]) -> None:
        try:
            await self.refresh(",".join(sorted(indices)))
        except Exception as exc:  # the periodic refresh still makes the writes visible
            log.warning("refresh of %s failed (%s); visible at the periodic one", indices, exc)
            return
        self.refreshes += 1
        metrics.REFRESHES.inc()

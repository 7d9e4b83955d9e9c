"""Written documents made searchable soon after Elasticsearch acknowledged them.

Elasticsearch makes writes searchable at its periodic refresh (`refresh_interval`): at
1 s a write waited half a second for it on average, and that wait was the largest part of
the indexer's publish -> searchable time at a steady rate (docs/benchmarks/RESULTS.md,
*Freshness*); the documents' indices now refresh every 30 s by themselves, a backstop
(ADR 0013). The `Refresher` refreshes the indices a step wrote right after its writes
were acknowledged, at most once every `interval_s`:

- requests are coalesced: every index written since the last refresh, in one `_refresh`;
- a step never waits for it (it runs in its own task, off the chain of steps and commits);
- the processor does not ask while a backlog is consumed (a step that defers documents,
  docs/propagation.md), when throughput matters more than a second of visibility; the
  first step that does not defer asks for what those steps wrote;
- a failed refresh is logged and asked again, after a pause that doubles with each
  failure in a row (at most `max_backoff_s`): the indices' periodic refresh is only a
  backstop (30 s, ADR 0013), so a refresh is never forgotten.
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
        max_backoff_s: float = 10.0,
    ) -> None:
        self.refresh = refresh
        self.interval_s = interval_s
        self.clock = clock
        self.sleep = sleep
        self.pending: set[str] = set()
        self.refreshes = 0
        self.max_backoff_s = max_backoff_s
        self.failures = 0  # in a row
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
            pause = self.interval_s
            if self.failures:
                pause = min(max(self.interval_s, 0.1) * 2**self.failures, self.max_backoff_s)
            delay = self._last + pause - self.clock()
            if delay > 0:  # requests arriving meanwhile join this refresh
                await self.sleep(delay)
            self._wake.clear()
            indices, self.pending = self.pending, set()
            self._last = self.clock()
            await self._refresh(indices)

    async def _refresh(self, indices: set[str]) -> None:
        try:
            await self.refresh(",".join(sorted(indices)))
        except Exception as exc:
            self.failures += 1
            log.warning("refresh of %s failed (%s); asked again", sorted(indices), exc)
            self.request(indices)
            return
        self.failures = 0
        self.refreshes += 1
        metrics.REFRESHES.inc()

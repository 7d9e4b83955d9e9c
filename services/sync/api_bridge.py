"""`sync-prefect --api-url`: the topics kept in step with Prefect through its API only.

For a Prefect without database access (Prefect Cloud, or a server one may only call).
This module is the session loop: it checks the URL and the key, opens the checkpoint
(services/sync/api_state.py) and the idempotent producer, and runs one session's tasks
(services/sync/api_session.py: Prefect's events -> reads, reconcile passes, publishing)
until SIGTERM; a transient failure starts a new session with capped exponential backoff
(docs/adr/0009-prefect-api-sync.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.config import KafkaSettings
from services.errors import BackendUnavailableError
from services.kafka import BULK_BATCH_BYTES, producer_kwargs
from services.sync import metrics
from services.sync.api_plan import TouchQueue
from services.sync.api_session import ApiSession, Shared, with_backoff
from services.sync.api_state import ApiSyncStore
from services.sync.prefect_api import PrefectAPI, PrefectAuth

log = logging.getLogger("sync")

#: failures a new session may not meet again: reconnect with backoff
TRANSIENT = (BackendUnavailableError, KafkaError, OSError, TimeoutError)


@dataclass(frozen=True)
class ApiSyncOptions:
    """Where Prefect is, how hard the bridge may call it, and where its checkpoint lives."""

    api_url: str
    auth: PrefectAuth = field(default_factory=PrefectAuth)
    state_path: Path | None = Path("prefect-sync-api.sqlite")
    requests_per_second: float = 20.0
    reconcile_interval_s: float = 300.0
    reconcile_full_every: int = 12  # every 12th pass (and a session's first) is full
    reconcile_overlap_s: float = 600.0  # incremental passes list back to the mark minus this
    page_size: int = 200  # Prefect's default maximum `limit`
    read_batch: int = 50
    max_queued: int = 100_000
    debounce_s: float = 0.2
    settle_s: float = 3.0
    event_overlap_s: float = 120.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    report_every_s: float = 30.0


class ApiBridge:
    """Keeps the entity topics in step with one Prefect API (workspace)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        options: ApiSyncOptions,
        *,
        progress_stream: TextIO | None = None,
        on_ready: Callable[[bool], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.options = options
        self.on_ready = on_ready or (lambda _: None)
        self.shared = Shared(options, self.on_ready, progress_stream)
        self._reached = False  # Prefect answered once: an outage later is transient
        metrics.LAG.set_function(self.shared.lag)

    @property
    def published(self) -> int:
        """Events Kafka acknowledged, this process."""
        return self.shared.published

    @property
    def passes(self) -> int:
        """Reconcile passes completed, this process."""
        return self.shared.passes

    # ---- the session loop ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; `SyncSetupError` (and bugs) end it, transient failures
        start a new session with capped exponential backoff."""

        async def pause(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

        retrying = with_backoff(
            self.options,
            TRANSIENT,
            "sync session failed, starting again",
            on_retry=lambda: self.on_ready(False),
            stop=lambda _: stop.is_set(),
            sleep=pause,
        )
        with contextlib.suppress(*TRANSIENT):  # only when stopped while failing
            await retrying(self._session, stop)
        self.on_ready(False)

    async def _session(self, stop: asyncio.Event) -> None:
        if stop.is_set():
            return
        opts = self.options
        metrics.PHASE.set(0)
        api = PrefectAPI(opts.api_url, opts.auth, requests_per_second=opts.requests_per_second)
        store: ApiSyncStore | None = None
        producer: AIOKafkaProducer | None = None
        try:
            await api.check(unreachable_is_fatal=not self._reached)
            self._reached = True
            store = ApiSyncStore(opts.state_path, opts.api_url)
            producer = AIOKafkaProducer(
                **producer_kwargs(self.kafka),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_batch_size=BULK_BATCH_BYTES,
            )
            await producer.start()
            self.shared.queue = TouchQueue()
            subscribed, reconciled = asyncio.Event(), asyncio.Event()
            session = ApiSession(self.shared, self.kafka, api, store, producer)
            await _first_failure(
                [
                    session.events(stop, subscribed),
                    session.reads(stop),
                    session.reconcile(stop, reconciled),
                    session.ready_when(subscribed, reconciled),
                ],
                stop,
            )
            with contextlib.suppress(TimeoutError, KafkaError):
                await asyncio.wait_for(producer.flush(), 30)
        finally:
            self.on_ready(False)
            with contextlib.suppress(Exception):
                if producer is not None:
                    await producer.stop()
            if store is not None:
                store.close()
            await api.close()


async def _first_failure(work: Iterable[Coroutine[Any, Any, None]], stop: asyncio.Event) -> None:
    """Run the session's tasks until `stop` is set or one of them fails (then raise it)."""
    tasks = [asyncio.create_task(w) for w in work]
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*tasks, stopper]:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
    for task in done:
        if task is not stopper and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        if task is not stopper and not stop.is_set():
            raise BackendUnavailableError("a session task ended unexpectedly")


__all__ = ["ApiBridge", "ApiSyncOptions"]

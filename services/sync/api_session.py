"""One session of `sync-prefect --api-url`: its three tasks and the publishing step they share.

- `events`: Prefect's `/events/out` websocket from the saved event position (minus an
  overlap): each event's entities (services/sync/api_plan.py) are queued for a read; a
  lost stream subscribes again from the saved position;
- `reads`: due entities are read with `GET /{collection}/{id}`, in batches; what changed
  is published (upsert; a 404 of a published entity: delete), and each entity an event
  named is read once more `settle_s` later (Prefect writes task runs and states a moment
  after the event that announces them);
- `reconcile`: at the start and every `reconcile_interval_s`, a paged listing of the five
  collections (by `updated` where Prefect offers it) publishes what changed without an
  event; after a complete listing, ids published as live that it lacks are read again: a
  404 publishes their delete (deleting an artifact emits no event of its own). The
  session's first pass and every `reconcile_full_every`-th are complete; the others
  list flows, deployments and artifacts only back to their high-water mark minus an
  overlap (services/sync/api_passes.py). The first pass of a new checkpoint is the
  initial snapshot (progress on stderr).

`publish` (decide -> Kafka, acks=all, idempotent -> checkpoint store) runs under one lock,
so the decisions for one entity are taken one after another on what was acknowledged;
the store is written after Kafka's acknowledgements: a crash re-sends, never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from aiokafka import AIOKafkaProducer
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from services.config import KafkaSettings
from services.errors import BackendUnavailableError
from services.prefect.tables import TABLES
from services.progress import Progress
from services.sync import metrics
from services.sync.api_passes import (
    INCREMENTAL,
    PassPlan,
    high_water_after,
    plan_pass,
    reached_back,
)
from services.sync.api_plan import (
    Published,
    Ref,
    Source,
    TouchQueue,
    checkpoint_after,
    decide,
    event_occurred,
    parse_time,
    refs_of_event,
    vanished,
)
from services.sync.api_state import ApiSyncStore
from services.sync.prefect_api import PrefectAPI, is_uuid

if TYPE_CHECKING:
    from services.sync.api_bridge import ApiSyncOptions

log = logging.getLogger("sync")


@dataclass
class Shared:
    """What outlives a session: the options, counters, the read queue, the lag's inputs."""

    options: ApiSyncOptions
    on_ready: Callable[[bool], None]
    progress_stream: TextIO | None = None
    queue: TouchQueue = field(default_factory=TouchQueue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    newest_seen: datetime | None = None
    last_delay: float = 0.0
    published: int = 0  # events Kafka acknowledged, this process
    passes: int = 0  # reconcile passes completed, this process

    def lag(self) -> float:
        """Seconds behind Prefect: now minus the oldest event still waiting for its reads,
        else the last event's arrival-to-publish delay."""
        oldest = self.queue.oldest_occurred()
        if oldest is None:
            return self.last_delay
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds())


def with_backoff(
    options: ApiSyncOptions,
    kinds: tuple[type[BaseException], ...],
    what: str,
    on_retry: Callable[[], None] = lambda: None,
    **extra: Any,
) -> AsyncRetrying:
    """Retry on `kinds` with capped exponential backoff and jitter, counting and logging
    each retry (tenacity; `extra`: its stop and sleep)."""

    def before_sleep(state: RetryCallState) -> None:
        on_retry()
        metrics.RECONNECTS.inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("%s: %s", what, exc)

    return AsyncRetrying(
        retry=retry_if_exception_type(kinds),
        wait=wait_exponential_jitter(initial=options.retry_initial_s, max=options.retry_max_s),
        before_sleep=before_sleep,
        reraise=True,
        **extra,
    )


def _updated(body: Mapping[str, Any]) -> datetime | None:
    """A listed entity's `updated` (None when absent or malformed)."""
    try:
        return parse_time(str(body["updated"]))
    except (KeyError, ValueError):
        return None


def _as_reads(
    refs: list[Ref], bodies: list[dict[str, Any] | None]
) -> list[tuple[Ref, Mapping[str, Any] | None, Source]]:
    return [(ref, body, "read") for ref, body in zip(refs, bodies, strict=True)]


class ApiSession:
    """The three tasks of one session and the publishing step they share."""

    def __init__(
        self,
        shared: Shared,
        kafka: KafkaSettings,
        api: PrefectAPI,
        store: ApiSyncStore,
        producer: AIOKafkaProducer,
    ) -> None:
        self.shared = shared
        self.options = shared.options
        self.kafka = kafka
        self.api = api
        self.store = store
        self.producer = producer
        self.queue = shared.queue
        self.position = store.event_position
        self.room = asyncio.Event()  # set while the queue has room for more events

    # ---- events -> queue -------------------------------------------------------------------

    async def events(self, stop: asyncio.Event, subscribed: asyncio.Event) -> None:
        """Follow the event stream; a dropped connection (load balancers close idle ones)
        subscribes again from the saved position, within the session: Prefect replays the
        gap, and the session's passes cover what it cannot replay."""

        retrying = with_backoff(
            self.options, (BackendUnavailableError,), "event stream lost, subscribing again"
        )
        await retrying(self._subscribe, stop, subscribed)

    async def _subscribe(self, stop: asyncio.Event, subscribed: asyncio.Event) -> None:
        opts, queue = self.options, self.queue
        now = datetime.now(UTC)
        since = (self.position or now) - timedelta(seconds=opts.event_overlap_s)
        log.info("subscribing to Prefect's events since %s", since.isoformat())
        async for event in self.api.subscribe(since, now, subscribed.set):
            if stop.is_set():
                return
            metrics.API_EVENTS.inc()
            occurred = event_occurred(event)
            if occurred is not None and (
                self.shared.newest_seen is None or occurred > self.shared.newest_seen
            ):
                self.shared.newest_seen = occurred
            due = time.monotonic() + opts.debounce_s
            for ref in refs_of_event(event):
                queue.schedule(ref, due, occurred)
            self.shared.wake.set()
            if len(queue) >= opts.max_queued:  # back-pressure: the reads must catch up
                self.room.clear()
                await self.room.wait()
        raise BackendUnavailableError("Prefect closed the event stream")

    # ---- queue -> reads -> Kafka ---------------------------------------------------------

    async def reads(self, stop: asyncio.Event) -> None:
        opts, queue, wake = self.options, self.queue, self.shared.wake
        reported, reported_count = time.monotonic(), self.shared.published
        # every loop below ends when `stop` is set: with Python 3.11's wait_for, a
        # cancellation that meets a completing wait can be lost
        while not stop.is_set():
            now = time.monotonic()
            metrics.QUEUED.set(len(queue))
            batch = queue.pop_due(now, opts.read_batch)
            if len(queue) < opts.max_queued:
                self.room.set()
            if not batch:
                due = queue.next_due()
                wake.clear()
                timeout = 1.0 if due is None else max(0.0, min(1.0, due - now))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                if now - reported >= opts.report_every_s:
                    rate = (self.shared.published - reported_count) / (now - reported)
                    log.info(
                        "syncing: %.1f events/s, lag %.2fs, %d queued, %d requests",
                        rate,
                        self.shared.lag(),
                        len(queue),
                        self.api.requests,
                    )
                    reported, reported_count = now, self.shared.published
                continue
            refs = [ref for ref, _ in batch]
            bodies = await asyncio.gather(*(self.api.read(ref) for ref in refs))
            metrics.API_READS.inc(len(refs))
            async with self.shared.lock:
                await self.publish(_as_reads(refs, bodies), "event")
            settle = time.monotonic() + opts.settle_s
            now_utc = datetime.now(UTC)
            for ref, occurred in batch:
                if occurred is not None:  # read once more when Prefect has settled
                    queue.schedule(ref, settle)
                    delay = (now_utc - occurred).total_seconds()
                    self.shared.last_delay = max(0.0, delay)
            self._save_position()

    def _save_position(self) -> None:
        moved = checkpoint_after(
            self.queue.oldest_occurred(), self.shared.newest_seen, self.position
        )
        if moved is not None and moved != self.position:
            self.store.save_event_position(moved)
            self.position = moved

    async def publish(
        self, items: Iterable[tuple[Ref, Mapping[str, Any] | None, Source]], phase: str
    ) -> int:
        """Decide, send, wait for Kafka's acknowledgements, then record: the events of
        `items` (the last item of a ref wins). Callers hold the bridge's lock."""
        latest = {ref: (body, source) for ref, body, source in items}
        last = self.store.get(latest)
        now = datetime.now(UTC)
        decided: list[tuple[Ref, Published]] = []
        sends = []
        for ref, (body, source) in latest.items():
            outcome = decide(ref, body, last.get(ref), now, source)
            if outcome is None:
                continue
            event, published = outcome
            sends.append(
                await self.producer.send(
                    self.kafka.topic_for(event.entity),
                    value=event.encode(),
                    key=event.entity_id.encode(),
                )
            )
            decided.append((ref, published))
            metrics.IN_FLIGHT.set(len(sends))
        await asyncio.gather(*sends)
        metrics.IN_FLIGHT.set(0)
        self.store.record(decided)
        for ref, published in decided:
            op = "delete" if published.deleted else "upsert"
            metrics.EVENTS.labels(ref.entity, op, phase).inc()
        self.shared.published += len(decided)
        return len(decided)

    # ---- reconcile passes ----------------------------------------------------------------

    async def reconcile(self, stop: asyncio.Event, reconciled: asyncio.Event) -> None:
        """Passes until `stop`: the first of the session and every `reconcile_full_every`-th
        one full, the others incremental (services/sync/api_passes.py)."""
        opts = self.options
        number = 0
        while not stop.is_set():
            initial = not self.store.snapshot_complete
            plan = plan_pass(
                number,
                opts.reconcile_full_every,
                self.store.high_water(),
                timedelta(seconds=opts.reconcile_overlap_s),
            )
            started = time.monotonic()
            await self.reconcile_pass(initial, plan)
            if initial:
                self.store.mark_snapshot_complete()
            number += 1
            self.shared.passes += 1
            metrics.RECONCILE_PASSES.inc()
            metrics.RECONCILE_SECONDS.set(time.monotonic() - started)
            reconciled.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.reconcile_interval_s)

    async def reconcile_pass(self, initial: bool, plan: PassPlan | None = None) -> None:
        """List the collections as `plan` says (default: everything); publish what
        changed; after a complete listing, delete what vanished."""
        opts = self.options
        plan = plan or plan_pass(0, 1, {}, timedelta(0))
        phase = "snapshot" if initial else "reconcile"
        if initial:
            metrics.PHASE.set(1)
        progress: Progress | None = None
        if initial:
            counts = [await self.api.count(e) for e in TABLES]
            total = None if None in counts else sum(c for c in counts if c is not None)
            progress = Progress("snapshot", total, self.shared.progress_stream, unit="entities")
            progress.update(0, force=True)
        done, published, deleted = 0, 0, 0
        for listing in plan.listings:
            entity = listing.entity
            listed: set[str] = set()
            newest = self.store.high_water().get(entity)
            offset = 0
            while True:
                page = await self.api.list_page(entity, offset, opts.page_size)
                items = [
                    (Ref(entity, str(body["id"]).lower()), body, "listing")
                    for body in page
                    if is_uuid(str(body.get("id")))
                ]
                listed.update(ref.id for ref, _, _ in items)
                async with self.shared.lock:
                    published += await self.publish(items, phase)  # type: ignore[arg-type]
                done += len(page)
                if progress is not None:
                    progress.update(done, note=entity)
                updated = [u for u in (_updated(body) for body in page) if u is not None]
                newest = high_water_after(newest, updated)
                if reached_back(listing, updated, len(page) >= opts.page_size):
                    break
                offset += len(page)
            if entity in INCREMENTAL and newest is not None:
                self.store.save_high_water(entity, newest)
            if not listing.full:
                continue  # a partial listing says nothing about deletions
            gone = sorted(vanished(self.store.live_ids(entity), listed))
            if gone:  # confirmed one by one: a listing paged by offset may skip a row
                refs = [Ref(entity, i) for i in gone]
                bodies = await asyncio.gather(*(self.api.read(ref) for ref in refs))
                found = sum(1 for body in bodies if body is None)
                metrics.DELETES_FOUND.inc(found)  # counted before the deletes can be seen
                deleted += found
                async with self.shared.lock:
                    published += await self.publish(_as_reads(refs, bodies), phase)
        if progress is not None:
            progress.finish()
        log.info(
            "%s pass%s: %d listed, %d events, %d vanished (published: %s)",
            phase,
            "" if plan.full else " (incremental)",
            done,
            published,
            deleted,
            self.store.counts(),
        )

    async def ready_when(self, subscribed: asyncio.Event, reconciled: asyncio.Event) -> None:
        """Ready (/readyz) once the event stream is open and a pass has completed."""
        await subscribed.wait()
        await reconciled.wait()
        metrics.PHASE.set(2)
        self.shared.on_ready(True)
        log.info("in step with %s: streaming Prefect's events", self.options.api_url)
        await asyncio.Event().wait()  # ends with the session


__all__ = ["ApiSession", "Shared", "with_backoff"]

"""The alerts worker: the indexer's change feed in, alerts out (docs/search.md, ADR 0008).

For each batch of change records (consumer group `ALERTS_GROUP_ID`, offsets committed
only after the batch's alerts are acknowledged and marked):

1. merge them into {artifact id: highest document version} and {collection id: ...};
2. **make those versions searchable**, while the saved searches are loaded: the indexer's
   `_bulk` makes documents durable and readable by id at once, but searchable only after
   the next refresh (the indexer's, within 0.25 s of the write, ADR 0012; the indices'
   periodic one is a 30 s backstop, ADR 0013). A search for the ids with `version: true`
   tells which versions are searchable; if some are not, the worker forces one refresh of
   the indices concerned (artifacts, and collections when a latest_per_key search exists)
   at once, or, with `ALERTS_VISIBILITY_WAIT_S` > 0, polls that long for a
   refresh first (ADR 0008, "Latency"). Every search of a batch uses the same
   `preference`, so it reads the same shard copies (refreshes only move a copy forward);
3. run every saved search restricted to the changed ids: one search per 1,000 ids and
   100 saved searches, each saved search a named clause (`matched_queries` tells which
   matched), all in one `_msearch`: searches in artifacts mode over the changed artifacts,
   searches in latest_per_key mode over the changed collections (a key's latest
   artifact; its version is then read from the artifact index);
4. claim each match in the ledger (alerts/ledger.py); publish the newly claimed ones (and
   abandoned claims taken over) to the alert topic, wait for Kafka's acknowledgement, mark
   them published;
5. commit the batch's offsets.

Batches are pipelined: steps 4-5 of a batch (ledger writes and Kafka's acknowledgement, a
few round trips) run in a task of their own while the next batch is fetched and steps 1-3
run for it; a batch's delivery starts only after the one before it finished, so alerts go
out and offsets are committed in batch order (the offsets of each batch explicitly, never
the consumer's position, which is already past the next batch). At most one delivery is in
flight; a matching version seen by two batches makes one alert (one ledger claim wins).

Between batches (every `EXISTING_CHECK_S`), saved searches with `notify_existing` whose
current fingerprint has not been scanned get a bounded scan of what already matches (a
point in time, newest first, at most `ALERTS_EXISTING_SCAN_MAX`), claimed and published the
same way; the scan is then recorded on the saved search (a compare-and-set: a search
replaced meanwhile is scanned again). A search Elasticsearch refuses to run is logged,
counted (`alerts_search_errors_total`) and recorded as scanned, not retried. At start-up
and every `ALERTS_LEDGER_PRUNE_INTERVAL_S` the ledger is pruned (alerts/ledger.py).

A failure anywhere retries the whole batch (tenacity, backoff with jitter, for ever): every
step is idempotent, so a retry, a redelivery after a crash or a replay of the feed publishes
nothing twice (except in the window described in the ADR).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from elasticsearch import ApiError, BadRequestError, TransportError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from alerts import metrics
from alerts.evaluator import Evaluator
from alerts.kafka_io import ConsumeProduce, Record, next_offsets
from alerts.ledger import Claimed, Ledger
from alerts.model import AlertMessage, SavedSearch, alert_message
from alerts.searches import MAX_SAVED_SEARCHES, SavedSearchStore
from services.changes import BadChangeRecordError, decode_changes, merge_changes
from services.config import AlertsSettings, KafkaSettings
from services.documents import format_timestamp, to_micros
from services.errors import BackendUnavailableError, TransientError, TranslationError

log = logging.getLogger("alerts.worker")
T = TypeVar("T")

EXISTING_CHECK_S = 2.0
"""How often the worker looks for saved searches whose existing matches are owed."""

PRODUCE_BATCH_BYTES = 512 * 1024
"""The producer's batch size per partition. aiokafka sends one batch per partition at a time
and `send` waits while that batch is full, so with the default 16 KiB (a dozen alerts) a
batch of a thousand alerts took about a hundred round trips; below Kafka's default
1 MiB record-batch limit."""


class AlertWorker:
    """Consumes the change feed and publishes alerts (see the module docstring)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: AlertsSettings,
        evaluator: Evaluator,
        store: SavedSearchStore,
        ledger: Ledger,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.evaluator = evaluator
        self.store = store
        self.ledger = ledger
        self.io = ConsumeProduce(
            kafka,
            kafka.changes_topic,
            settings.group_id,
            settings.max_batch,
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=PRODUCE_BATCH_BYTES,
        )
        self.batches = 0
        self.matched = 0
        self.published = 0
        self.recovered = 0
        self.pruned = 0
        self.existing = 0
        self._latest_hint = True  # whether the last batch had a latest_per_key search

    async def start(self) -> None:
        """Start the producer and the change-feed consumer."""
        await self.io.start()

    async def stop(self) -> None:
        """Stop consuming (an unfinished batch is not committed: it is redelivered)."""
        await self.io.stop()

    async def run(self, stopping: asyncio.Event) -> None:
        """Process batches until `stopping` is set; sweep abandoned claims at the start and
        every half claim timeout."""
        next_sweep = next_prune = next_existing = 0.0
        delivering: asyncio.Task[None] | None = None
        try:
            while not stopping.is_set():
                if time.monotonic() >= next_existing:
                    await self._retry(self.alert_existing)
                    next_existing = time.monotonic() + EXISTING_CHECK_S
                if time.monotonic() >= next_sweep:
                    await self._retry(self.recover)
                    next_sweep = time.monotonic() + max(self.settings.claim_timeout_s / 2, 1.0)
                if time.monotonic() >= next_prune:
                    await self._retry(self.prune)
                    next_prune = time.monotonic() + self.settings.ledger_prune_interval_s
                records = await self.io.next_batch()
                if not records:
                    continue
                started = time.perf_counter()
                changed, collections = _decode(records)
                messages = await self._retry(partial(self.prepare, changed, collections))
                if delivering is not None:
                    await delivering  # in order; its failure stops the worker here
                delivering = asyncio.create_task(
                    self._deliver_batch(messages, next_offsets(records), started)
                )
            if delivering is not None:
                await delivering  # a clean stop finishes the batch in flight
        finally:
            if delivering is not None and not delivering.done():
                delivering.cancel()  # failing or cancelled: redelivered (uncommitted)
                with contextlib.suppress(BaseException):
                    await delivering

    async def _deliver_batch(
        self, messages: list[AlertMessage], offsets: dict[TopicPartition, int], started: float
    ) -> None:
        await self._retry(partial(self.deliver, messages))
        await self.io.commit(offsets)
        self.batches += 1
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def prepare(
        self, changed: dict[str, int], collections: dict[str, int]
    ) -> list[AlertMessage]:
        """Steps 1-3 for one batch of changes: the alert messages of its matches."""
        if not changed and not collections:
            return []
        metrics.CHANGES.inc(len(changed))
        # the saved searches are read while the changes are made searchable; the collections
        # too if the previous batch had a latest_per_key search (a guess, checked below)
        pending = {self.evaluator.artifacts: changed}
        if self._latest_hint:
            pending[self.evaluator.collections] = collections
        loaded, _ = await asyncio.gather(self.store.all(), self.evaluator.wait_visible(pending))
        searches: list[SavedSearch] = loaded
        latest = self._latest_hint = any(s.search.latest_per_key for s in searches)
        if not searches:
            return []
        if latest and self.evaluator.collections not in pending:
            await self.evaluator.wait_visible({self.evaluator.collections: collections})
        matches = await self.evaluator.evaluate(
            searches, sorted(changed), sorted(collections) if latest else []
        )
        metrics.MATCHES.inc(len(matches))
        self.matched += len(matches)
        now = datetime.now(UTC)
        by_id = {s.id: s for s in searches}
        stamp = format_timestamp(now)
        return [alert_message(m, by_id[m.search_id], stamp) for m in matches]

    async def deliver(self, messages: list[AlertMessage]) -> int:
        """Step 4: claim the alerts, publish those this worker holds, mark them; how many."""
        if not messages:
            return 0
        claims = await self.ledger.claim(messages, to_micros(datetime.now(UTC)))  # lease start
        return await self._publish(claims)

    async def recover(self) -> int:
        """Publish the alerts whose claimant died before Kafka acknowledged them."""
        taken = await self.ledger.take_abandoned(to_micros(datetime.now(UTC)))
        if taken:
            log.warning("publishing %d alerts abandoned by an earlier attempt", len(taken))
        self.recovered += len(taken)
        return await self._publish(taken)

    async def alert_existing(self) -> int:
        """Scan the existing matches of saved searches that ask for it (`notify_existing`)
        and whose current fingerprint was not scanned yet; alert each once, through the
        same ledger claims as the change feed (a match seen both ways alerts once)."""
        owed = [s for s in await self.store.all() if s.existing_scan == "pending"]
        published = 0
        for search in owed:
            matches = 0
            try:
                async for page in self.evaluator.scan(search, self.settings.existing_scan_max):
                    now = datetime.now(UTC)
                    stamp = format_timestamp(now)
                    messages = [alert_message(m, search, stamp) for m in page]
                    matches += len(page)
                    claimed = await self.ledger.claim(messages, to_micros(now))
                    published += await self._publish(claimed)
            except (BadRequestError, TranslationError) as exc:  # this search, not the cluster
                metrics.SEARCH_ERRORS.inc()
                log.error("saved search %s: existing matches cannot be scanned: %s", search.id, exc)
            if matches >= self.settings.existing_scan_max:
                log.warning(
                    "saved search %s: existing matches cut at ALERTS_EXISTING_SCAN_MAX (%d)",
                    search.id,
                    self.settings.existing_scan_max,
                )
            if await self.store.mark_scanned(search.id, search.fingerprint):
                log.info("saved search %s: %d existing matches scanned", search.id, matches)
        self.existing += published
        return published

    async def prune(self) -> int:
        """Delete ledger entries of deleted saved searches, and published entries older
        than `ALERTS_LEDGER_RETENTION_DAYS` (when set)."""
        live = await self.store.ids()
        now_us = to_micros(datetime.now(UTC))
        if len(live) >= MAX_SAVED_SEARCHES:  # the list may be cut short: no orphans
            orphans_before = 0
        else:  # a search created after the list was read may already have claims
            orphans_before = now_us - int(max(self.settings.claim_timeout_s, 60.0) * 1e6)
        days = self.settings.ledger_retention_days
        older_than = now_us - int(days * 86_400e6) if days > 0 else None
        deleted = await self.ledger.prune(live, orphans_before, older_than)
        if deleted:
            log.info("pruned %d ledger entries", deleted)
        metrics.PRUNED.inc(deleted)
        self.pruned += deleted
        return deleted

    async def _publish(self, claims: Sequence[Claimed]) -> int:
        """Publish claimed alerts, wait for Kafka, then mark them published."""
        producer = self.io.producer
        futures = [
            await producer.send(
                self.kafka.alerts_topic,
                key=c.message.saved_search.id.encode(),
                value=c.message.model_dump_json().encode(),
                headers=[("alert_id", c.message.alert_id.encode())],
            )
            for c in claims
        ]
        await asyncio.gather(*futures)
        await self.ledger.mark_published(claims)
        metrics.PUBLISHED.inc(len(claims))
        self.published += len(claims)
        return len(claims)

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_RETRIED),
            wait=wait_exponential_jitter(
                initial=self.settings.retry_initial_s, max=self.settings.retry_max_s
            ),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover


_RETRIED = (TransientError, BackendUnavailableError, ApiError, TransportError, KafkaError, OSError)
"""Failures a retry of the batch may overcome; anything else is a bug and stops the worker."""


def _decode(records: Sequence[Record]) -> tuple[dict[str, int], dict[str, int]]:
    """A batch's change records merged: ({artifact id: version}, {collection id: version});
    an undecodable record is logged, counted and skipped."""
    pairs: list[tuple[str, int]] = []
    collections: list[tuple[str, int]] = []
    for record in records:
        try:
            artifacts, keys = decode_changes(record.value)
            pairs.extend(artifacts)
            collections.extend(keys)
        except BadChangeRecordError as exc:
            metrics.BAD_RECORDS.inc()
            log.error("skipping a change record at %s:%d: %s", record.topic, record.offset, exc)
    return merge_changes(pairs), merge_changes(collections)


def _log_retry(state: Any) -> None:
    metrics.RETRIES.inc()
    exc = state.outcome.exception() if state.outcome else None
    log.warning("retrying a batch of changes (attempt %d): %r", state.attempt_number, exc)

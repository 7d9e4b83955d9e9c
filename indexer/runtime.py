"""The indexer's processor: runs steps over the store and performs their effects in order.

One `Processor` per replica. For every batch of consumed records, under one lock:

1. activate newly assigned group partitions: take a new epoch (compare-and-set in the
   control index); if the epoch is not the stored one plus one, or the control index is
   another one, somebody else may have written the partition's documents meanwhile, so
   it is rewritten whole (a cursor, a slice per step);
2. run the pure step (indexer/step.py) on a `Tx` of the store;
3. write its documents with external versions (`epoch << 40 | sequence`), publish its
   member records, dead-letter its poison — each retried with backoff and jitter
   (tenacity) until it succeeds, so nothing is ever skipped;
4. commit the `Tx` — state and positions — in one atomic store batch.

Steps 3 and 4 run in the background (`submit`): while Elasticsearch indexes one step, the
next is computed on top of it (its `Tx` reads through the uncommitted one); commits stay in
order, at most `depth` steps are in flight.

Only then may Kafka offsets be committed (the caller does it: they only serve lag
monitoring; positions are resumed from the store). A crash anywhere before step 4 leaves
the store at the previous step and the same records are applied again: every effect is a
blind versioned write or a re-sent record, so repeating it is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential_jitter,
)

from indexer import keys, metrics
from indexer.collections import Member
from indexer.graph import Refs
from indexer.state import Cache, Tx
from indexer.step import TP, Poison, RecordLike, StepOutput, Topology, run_step
from indexer.store import Store
from indexer.writer import MAX_SEQUENCE, Versioned, WriteStats, version_of
from services.errors import PermanentError, TransientError

log = logging.getLogger("indexer.runtime")

T = TypeVar("T")


GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic GC's thresholds in the indexer process (`gc.set_threshold`): a step allocates
tens of thousands of short-lived objects, and with Python's defaults (700, 10, 10) the GC
runs hundreds of times a second (about 20 % of a step's CPU, `make profile-engine`)."""


class Writer(Protocol):
    """Where final documents go (Elasticsearch, or a fake)."""

    async def write(self, writes: Sequence[Versioned]) -> WriteStats: ...


class Epochs(Protocol):
    """Partition epochs shared by every replica of the group."""

    async def acquire(self, topic: str, partition: int) -> tuple[int, str]: ...


PublishMembers = Callable[[Sequence[tuple[int, Member]]], Awaitable[None]]
DeadLetter = Callable[[Poison], Awaitable[None]]
PublishChanges = Callable[[Sequence[Versioned]], Awaitable[None]]
Written = Callable[[set[str]], None]


@dataclass
class StepResult:
    """A committed step: its output and the positions it reached."""

    output: StepOutput
    positions: dict[TP, int] = field(default_factory=dict)
    stats: WriteStats = field(default_factory=WriteStats)


class PipelineError(TransientError):
    """A step in flight failed; nothing after it was committed (see `Processor.reset`)."""


class Processor:
    """One replica's state, ownership and effects (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        topology: Topology,
        writer: Writer,
        epochs: Epochs,
        index_of: Callable[[str], str],
        publish_members: PublishMembers | None = None,
        dead_letter: DeadLetter | None = None,
        *,
        max_event_bytes: int = 1_000_000,
        rewrite_budget: int = 5_000,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 10.0,
        depth: int = 1,
        defer_lag: int = 0,
        defer_max_s: float = 10.0,
        publish_changes: PublishChanges | None = None,
        written: Written | None = None,
        cache_entries: int = 100_000,
    ) -> None:
        self.store = store
        self.topology = topology
        self.writer = writer
        self.epochs = epochs
        self.index_of = index_of
        self.publish_members = publish_members
        self.dead_letter = dead_letter
        # the change feed (indexer/changes.py): after the writes, before the commit
        self.publish_changes = publish_changes
        # told the indices a step wrote, once acknowledged: indexer/refresh.py makes them
        # searchable. A step that defers documents (a backlog) holds them back instead
        # (`unrefreshed`); the next step that does not defer (the one that writes what was
        # deferred, or an empty one the idle loop runs) tells them (ADR 0013)
        self.written = written
        self.unrefreshed: set[str] = set()
        self.max_event_bytes = max_event_bytes
        self.rewrite_budget = rewrite_budget
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.cache = Cache(cache_entries)
        self.active: dict[TP, int] = {}
        self.pending: set[TP] = set()
        self.lock = asyncio.Lock()
        self.sequence = 0
        self.steps = 0
        self.depth = depth
        # more than `defer_lag` records behind (0: never): steps mark their documents
        # instead of writing them, except one step every `defer_max_s` seconds
        self.defer_lag = defer_lag
        self.defer_max_s = defer_max_s
        self._flushed_at = time.monotonic()
        # records waiting to be applied, every input together (the app sets it from the
        # consumers' high watermarks): what a step is told when the caller does not say
        self.backlog: Callable[[], int] = lambda: 0
        self.failed: BaseException | None = None
        self._inflight: list[asyncio.Task[StepResult]] = []
        self._last: Tx | None = None
        self._last_done = True
        self.refs = Refs()
        # offsets below which a record may have been applied by a run that did not commit
        self.suspect: dict[TP, int] = {}
        self._submitted: dict[TP, int] = {}

    # -- ownership ----------------------------------------------------------------------
    def position(self, topic: str, partition: int) -> int:
        """The next offset to apply on a partition, from the committed store."""
        raw = self.store.get(keys.position(topic, partition))
        return 0 if raw is None else int(raw)

    def suspect_below(self, tp: TP, offset: int) -> None:
        """Records of `tp` below `offset` may have been applied, and their documents written,
        by a run that never committed (this process before a crash, or before `reset`):
        steps re-applying them take no "unchanged" shortcut. Called with the partition's
        end offset when it is (re)assigned or the process starts."""
        if offset > self.suspect.get(tp, 0):
            self.suspect[tp] = offset

    def assigned(self, tps: Sequence[TP]) -> None:
        """Group partitions were assigned: activated before the next step."""
        self.pending.update(tps)

    def revoked(self, tps: Sequence[TP]) -> None:
        """Group partitions were revoked: no more writes for them from this replica."""
        for tp in tps:
            self.active.pop(tp, None)
            self.pending.discard(tp)

    async def _activate(self) -> None:
        for tp in sorted(self.pending):
            epoch, control = await self._acquire(tp)
            if tp not in self.pending:  # revoked while the epoch was taken
                continue
            own_key = keys.ownership(*tp)
            own = Tx(self.store, self.cache).get(own_key)
            continuous = (
                own is not None and own.get("control") == control and own["epoch"] + 1 == epoch
            )
            record = {
                "epoch": epoch,
                "control": control,
                "rewrite": (own or {}).get("rewrite") if continuous else "",
                "marks": True,
            }
            tx = Tx(self.store, self.cache)
            tx.put(own_key, record)
            self.store.commit(tx.changes())
            tx.committed()
            if not continuous:
                # rewritten whole (forced, from the cursor) under an epoch newer than any
                # run that may have written the partition's documents: what such a run
                # wrote is superseded or rewritten, so its records need no `replaying`
                # step (which writes every collection it touches and defers nothing)
                self.suspect.pop(tp, None)
            self.active[tp] = epoch
            self.pending.discard(tp)
            log.info(
                "partition %s:%d active at epoch %d (%s)",
                *tp,
                epoch,
                "continuous" if continuous else "rewriting it whole",
            )

    async def _acquire(self, tp: TP) -> tuple[int, str]:
        return await self._retry(lambda: self.epochs.acquire(*tp))

    # -- steps --------------------------------------------------------------------------
    async def process(self, records: Sequence[RecordLike], behind: int | None = None) -> StepResult:
        """Apply records and wait until the step is committed."""
        return await (await self.submit(records, behind=behind))

    def deferring(self, behind: int | None = None) -> bool:
        """Whether documents are deferred now: more than `defer_lag` records wait (`behind`,
        else `backlog()`), and pending documents were written less than `defer_max_s` ago."""
        if not self.defer_lag:
            return False
        waiting = self.backlog() if behind is None else behind
        return waiting > self.defer_lag and time.monotonic() - self._flushed_at < self.defer_max_s

    def _defer(self, behind: int | None) -> bool:
        if self.deferring(behind):
            return True
        self._flushed_at = time.monotonic()
        return False

    async def submit(
        self,
        records: Sequence[RecordLike],
        on_commit: Callable[[StepResult], None] | None = None,
        behind: int | None = None,
    ) -> asyncio.Future[StepResult]:
        """Compute a step now; perform its effects and commit it in the background.

        Returns once the step is computed and fewer than `depth` steps are in flight, so
        the caller can fetch and compute the next batch while Elasticsearch indexes this
        one. Steps commit strictly in order; `on_commit` runs after the store commit.
        Group records of partitions this replica does not own are left for their owner.
        `behind`: records still waiting after these (a backlog defers documents; default
        `backlog()`).
        """
        async with self.lock:
            if self.failed is not None:
                raise PipelineError("an earlier step failed; call reset()") from self.failed
            if self.pending:
                await self.flush()
                await self._activate()
            while len(self._inflight) >= self.depth:
                await asyncio.wait([self._inflight[0]])
                if self.failed is not None:
                    raise PipelineError("an earlier step failed; call reset()") from self.failed
            started = time.perf_counter()
            topo = self.topology
            mine = [
                r
                for r in records
                if not topo.is_group_topic(r.topic) or (r.topic, r.partition) in self.active
            ]
            active = dict(self.active)
            base = self._last if self._last is not None and not self._last_done else None
            tx = Tx(self.store, self.cache, keys.MERGED_FAMILIES, base)
            for record in mine:
                tp = (record.topic, record.partition)
                if record.offset >= self._submitted.get(tp, 0):
                    self._submitted[tp] = record.offset + 1
            defer = self._defer(behind)
            output = run_step(
                tx,
                topo,
                mine,
                active,
                self.max_event_bytes,
                self.rewrite_budget,
                self.refs,
                self.suspect,
                defer,
            )
            writes = [
                Versioned(self.index_of(w.kind), w.doc_id, self._version(active[w.owner]), w.source)
                for w in output.writes
            ]
            previous = self._inflight[-1] if self._inflight else None
            task = asyncio.create_task(
                self._effects(tx, output, writes, previous, started, on_commit, not defer)
            )
            self._inflight.append(task)
            self._last, self._last_done = tx, False
            return task

    async def _effects(
        self,
        tx: Tx,
        output: StepOutput,
        writes: list[Versioned],
        previous: asyncio.Task[StepResult] | None,
        started: float,
        on_commit: Callable[[StepResult], None] | None,
        refresh: bool = True,
    ) -> StepResult:
        try:
            stats = await self._retry(lambda: self.writer.write(writes))
            if self.written is not None:
                self.unrefreshed.update(w.index for w in writes)
                if refresh and self.unrefreshed:
                    indices, self.unrefreshed = self.unrefreshed, set()
                    self.written(indices)
            changes_out = self.publish_changes
            if changes_out is not None and writes:
                await self._retry(lambda: changes_out(writes))
            if output.members:
                publish = self.publish_members
                assert publish is not None, "member records need a publisher"
                await self._retry(lambda: publish(output.members))
            for item in output.poison:
                await self._retry(partial(self._dead_letter, item))
            if previous is not None:
                await previous  # commit in order; a failed predecessor fails this step too
            changes = tx.changes()
            self.store.commit(changes)
            tx.committed()
            if self._last is tx:
                self._last_done = True
        except BaseException as exc:
            if self.failed is None:
                self.failed = exc
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._inflight.remove(asyncio.current_task())  # type: ignore[arg-type]
        self.steps += 1
        positions = {
            keys.split_position(k): int(v)
            for k, v in changes.items()
            if k[:1] == b"P" and v is not None
        }
        _observe(output, stats)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        result = StepResult(output, positions, stats)
        if on_commit is not None:
            on_commit(result)
        return result

    async def _dead_letter(self, item: Poison) -> None:
        assert self.dead_letter is not None, "poison records need a dead-letter topic"
        await self.dead_letter(item)

    async def flush(self) -> None:
        """Wait until every step in flight is committed (or failed)."""
        while self._inflight:
            await asyncio.wait(list(self._inflight))

    async def reset(self) -> None:
        """After a failed step: drop the steps in flight and their uncommitted state. The
        caller then re-reads every partition from the store's positions."""
        for task in list(self._inflight):
            task.cancel()
        for task in list(self._inflight):
            with contextlib.suppress(BaseException):
                await task
        self._inflight.clear()
        self._last, self._last_done = None, True
        self.refs.clear()  # it may hold state of the dropped steps
        for tp, end in self._submitted.items():  # their writes may have landed
            self.suspect_below(tp, end)
        self.failed = None

    async def drain(self) -> StepResult | None:
        """A step without records: drains marks and rewrite cursors (None when idle)."""
        if not self.has_work():
            return None
        return await self.process([])

    def has_work(self) -> bool:
        """Whether a step without records would do something (activate partitions, write
        marked documents — not while a backlog defers them —, rewrite a partition, ask for
        the refresh of what deferring steps wrote)."""
        if self.pending:
            return True
        marks = not self.deferring()
        return (marks and bool(self.unrefreshed)) or self._has_pending_work(marks=marks)

    def _has_pending_work(self, marks: bool = True) -> bool:
        tx = Tx(self.store, self.cache)
        for tp in self.active:
            own = tx.get(keys.ownership(*tp))
            if own is None:
                continue
            if (marks and own.get("marks")) or own.get("rewrite") is not None:
                return True
        return False

    def _rewriting(self) -> bool:
        tx = Tx(self.store, self.cache)
        return any(
            (tx.get(keys.ownership(*tp)) or {}).get("rewrite") is not None for tp in self.active
        )

    def _version(self, epoch: int) -> int:
        self.sequence += 1
        if self.sequence > MAX_SEQUENCE:  # pragma: no cover - 10^12 writes in one epoch
            raise TransientError("sequence exhausted: restart to take a new epoch")
        return version_of(epoch, self.sequence)

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry with exponential backoff and jitter, for ever, every failure but a
        `PermanentError`: an unclassified one stalls the partition visibly (retries metric,
        error log) rather than dropping or skipping anything (docs/contract.md)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception) & retry_if_not_exception_type(PermanentError),
            wait=wait_exponential_jitter(initial=self.retry_initial_s, max=self.retry_max_s),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover


def _log_retry(state: Any) -> None:
    metrics.RETRIES.inc()
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, TransientError):
        log.warning(
            "retrying after a transient failure (attempt %d): %s", state.attempt_number, exc
        )
    else:
        log.error(
            "retrying after an unexpected failure (attempt %d)",
            state.attempt_number,
            exc_info=exc,
        )


def _observe(output: StepOutput, stats: WriteStats) -> None:
    for entity, n in output.events.items():
        metrics.EVENTS.labels(entity=entity).inc(n)
    metrics.DOCUMENTS.labels(kind="written").inc(stats.written)
    metrics.DOCUMENTS.labels(kind="superseded").inc(stats.superseded)
    metrics.PROPAGATED.inc(output.fanned_out)
    metrics.FANOUT_DOCUMENTS.observe(output.fanned_out)
    metrics.REDELIVERED.inc(output.skipped)
    metrics.DEFERRED.inc(output.deferred)

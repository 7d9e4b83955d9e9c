"""A span and a log id per indexer batch: what a trace and a log line say about a step.

`batch_scope(records, source)` wraps the hand-over of one batch to the processor
(indexer/app.py). Inside it every log line carries a `batch_id`, and, when tracing is on
(services/telemetry.py), the span `indexer batch` is current: the Elasticsearch calls the
step makes — its `_bulk` requests, run by the processor's background task, which copies
the context — are its children, and so is nothing else. The span is a child of
FastStream's consumer span for the group subscriber's batches and a root for the global
(parent topics) consumer's. It links to the producers' spans whose W3C `traceparent`
Kafka headers the records carry (a batch has many parents, so links, as OpenTelemetry's
messaging conventions say), and ends when the step is committed or failed, not when the
batch is handed over (`follow`).

Attributes: `messaging.system`, `messaging.batch.message_count`, `indexer.source` (`group`
or `global`), `indexer.batch_id`, `indexer.partitions` (`topic:partition`),
`indexer.offsets` (`topic:partition:first-last`); after the commit `indexer.documents_written`
and `indexer.documents_superseded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.logging import log_fields
from services.telemetry import tracer_provider

MAX_LINKS = 64
"""Producer spans linked per batch at most (the SDK keeps 128 by default)."""

_PROPAGATOR = TraceContextTextMapPropagator()


class BatchScope:
    """The current batch's id and span (a non-recording span when tracing is off)."""

    def __init__(self, batch_id: str, span: Span) -> None:
        self.batch_id = batch_id
        self.span = span
        self._followed = False

    def follow(self, step: asyncio.Future[Any]) -> None:
        """End the span when the step's effects are committed (or failed)."""
        self._followed = True
        if self.span.is_recording():
            step.add_done_callback(self._done)

    def _done(self, step: asyncio.Future[Any]) -> None:
        if step.cancelled():
            self.span.set_status(Status(StatusCode.ERROR, "cancelled"))
        elif (exc := step.exception()) is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        else:
            stats = getattr(step.result(), "stats", None)
            if stats is not None:
                self.span.set_attribute("indexer.documents_written", stats.written)
                self.span.set_attribute("indexer.documents_superseded", stats.superseded)
        self.span.end()


def _header(record: Any, name: str) -> str | None:
    for key, value in getattr(record, "headers", None) or ():
        if key == name and value:
            try:
                return str(value.decode("ascii"))
            except (UnicodeDecodeError, AttributeError):
                return None
    return None


def producer_links(records: Sequence[Any]) -> list[Link]:
    """Links to the distinct producer spans named by the records' `traceparent` headers."""
    links: dict[int, Link] = {}
    for record in records:
        value = _header(record, "traceparent")
        if value is None:
            continue
        context = trace.get_current_span(_PROPAGATOR.extract({"traceparent": value}))
        span_context = context.get_span_context()
        if span_context.is_valid and span_context.span_id not in links:
            links[span_context.span_id] = Link(span_context)
            if len(links) >= MAX_LINKS:
                break
    return list(links.values())


def batch_attributes(records: Sequence[Any], source: str) -> dict[str, Any]:
    """What the batch span says about its records: count, partitions, offset ranges."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for r in records:
        tp = (r.topic, r.partition)
        low, high = ranges.get(tp, (r.offset, r.offset))
        ranges[tp] = (min(low, r.offset), max(high, r.offset))
    ordered = sorted(ranges.items())
    return {
        "messaging.system": "kafka",
        "messaging.batch.message_count": len(records),
        "indexer.source": source,
        "indexer.partitions": [f"{t}:{p}" for (t, p), _ in ordered],
        "indexer.offsets": [f"{t}:{p}:{lo}-{hi}" for (t, p), (lo, hi) in ordered],
    }


@contextlib.contextmanager
def batch_scope(records: Sequence[Any], source: str) -> Iterator[BatchScope]:
    """A batch id in the log lines and, when tracing is on, the batch's span as the current
    span for the enclosed code (see the module docstring)."""
    batch_id = uuid.uuid4().hex[:16]
    provider = tracer_provider()
    if provider is None:  # tracing off: the log id only
        with log_fields(batch_id=batch_id):
            yield BatchScope(batch_id, trace.INVALID_SPAN)
        return
    attributes = batch_attributes(records, source)
    attributes["indexer.batch_id"] = batch_id
    span = provider.get_tracer("indexer").start_span(
        "indexer batch", attributes=attributes, links=producer_links(records)
    )
    scope = BatchScope(batch_id, span)
    with (
        log_fields(batch_id=batch_id),
        trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ),
    ):
        try:
            yield scope
        except BaseException as exc:
            if not scope._followed:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            if not scope._followed:
                span.end()

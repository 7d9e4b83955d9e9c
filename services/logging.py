"""Structured JSON logs on stdlib logging, with a correlation id per unit of work.

`configure_logging()` installs one stderr handler whose formatter (python-json-logger)
writes one JSON object per line: `ts`, `level`, `logger`, `msg`, `correlation_id` (when
one is set), every `extra={...}` field, and `exc` for exceptions. FastStream and uvicorn
log through the same root handler (they are given a plain logger / no logging config of
their own), so every line of a process is JSON. The correlation id
lives in a context variable, so it follows asyncio tasks: wrap a batch, a
request or a CLI command in `correlation(...)` and every line logged inside
carries it. Narrower units add their own ids the same way with `log_fields(...)`: the
query API's `request_id` per HTTP request, the indexer's `batch_id` per batch. When a
trace span is current (tracing on, services/telemetry.py), every line also carries its
`trace_id` and `span_id` (hex, as trace backends show them), so a log line leads to its
trace.

Secrets are pydantic `SecretStr` in the settings, whose str/repr is masked, so
logging a settings object or an `extra` holding one never prints the secret.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
LOG_FIELDS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_fields")
"""Fields every line logged in the current context carries (`log_fields`)."""


@contextlib.contextmanager
def correlation(correlation_id: str | None = None) -> Iterator[str]:
    """Set the correlation id (a new random one by default) for the enclosed code."""
    value = correlation_id or uuid.uuid4().hex[:16]
    token = CORRELATION_ID.set(value)
    try:
        yield value
    finally:
        CORRELATION_ID.reset(token)


@contextlib.contextmanager
def log_fields(**fields: str) -> Iterator[None]:
    """Add `fields` (e.g. `request_id`, `batch_id`) to every line logged in the enclosed
    code, and in the asyncio tasks it creates (they copy the context)."""
    token = LOG_FIELDS.set({**LOG_FIELDS.get({}), **fields})
    try:
        yield
    finally:
        LOG_FIELDS.reset(token)


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per record (python-json-logger): `ts`, `level`, `logger`, `msg`,
    `correlation_id` when set, the context's `log_fields`, `trace_id` and `span_id` when a
    span is current, every `extra` field, `exc` for an exception."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s %(exc_info)s",
            rename_fields={
                "levelname": "level",
                "name": "logger",
                "message": "msg",
                "exc_info": "exc",
            },
            timestamp="ts",
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        cid = CORRELATION_ID.get()
        if cid is not None:
            log_data["correlation_id"] = cid
        for name, value in LOG_FIELDS.get({}).items():
            log_data.setdefault(name, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            log_data["trace_id"] = trace.format_trace_id(span.trace_id)
            log_data["span_id"] = trace.format_span_id(span.span_id)
        if log_data.get("exc") is None:
            log_data.pop("exc", None)
        for name in ("color_message",):  # uvicorn's coloured copy of the message
            log_data.pop(name, None)


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Route the root logger to one JSON handler on `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_clients()


def quiet_clients() -> None:
    """The clients are chatty at INFO (every connection, every HTTP request): WARNING and
    up only, unless the root logger asks for less."""
    root = logging.getLogger()
    for chatty in ("aiokafka", "elastic_transport", "httpx", "websockets"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))

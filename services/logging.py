"""Structured JSON logs on stdlib logging, with a correlation id per unit of work.

`configure_logging()` installs one stderr handler whose formatter (python-json-logger)
writes one JSON object per line: `ts`, `level`, `logger`, `msg`, `correlation_id` (when
one is set), every `extra={...}` field, and `exc` for exceptions. FastStream and uvicorn
log through the same root handler (they are given a plain logger / no logging config of
their own), so every line of a process is JSON. The correlation id
lives in a context variable, so it follows asyncio tasks: wrap a batch, a
request or a CLI command in `correlation(...)` and every line logged inside
carries it.

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

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)


@contextlib.contextmanager
def correlation(correlation_id: str | None = None) -> Iterator[str]:
    """Set the correlation id (a new random one by default) for the enclosed code."""
    value = correlation_id or uuid.uuid4().hex[:16]
    token = CORRELATION_ID.set(value)
    try:
        yield value
    finally:
        CORRELATION_ID.reset(token)


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per record (python-json-logger): `ts`, `level`, `logger`, `msg`,
    `correlation_id` when set, every `extra` field, `exc` for an exception."""

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

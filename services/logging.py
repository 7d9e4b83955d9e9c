"""Structured JSON logs on stdlib logging, with a correlation id per unit of work.

`configure_logging()` installs one stderr handler whose formatter writes one JSON
object per line: `ts`, `level`, `logger`, `msg`, `correlation_id` (when one is
set), every `extra={...}` field, and `exc` for exceptions. The correlation id
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
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

# attributes every LogRecord has; anything else came from `extra=`
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
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


def _jsonable(value: Any) -> Any:
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = CORRELATION_ID.get()
        if cid is not None:
            out["correlation_id"] = cid
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in out:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=_jsonable).decode()


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Route the root logger to one JSON handler on `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # the clients are chatty at INFO (every connection, every HTTP request)
    for chatty in ("aiokafka", "elastic_transport"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))

"""A request id per HTTP request: in every log line logged while handling it, and echoed.

`RequestIdMiddleware` (pure ASGI, the outermost of the app's own middlewares, so a 401 or
a 413 has one too) takes the caller's `X-Request-ID` when it is a plausible id (1-128
characters of letters, digits and `-_.:`; anything else could forge log lines) or makes a
new one, binds it as `request_id` for the log lines of the request (services/logging.py),
answers it in the `X-Request-ID` response header, and writes one access line per request
(logger `query.access`, INFO; not for the probes and /metrics): method, path (never the
query string), status, duration.
Tracing on, the server span of the request is current there too, so the line also has
its `trace_id` and `span_id`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.logging import log_fields

HEADER = "x-request-id"
QUIET_PATHS = frozenset({"/api/health", "/api/ready", "/metrics"})
"""Probes and scrapes: no access line (many a minute, and they tell nothing)."""
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("query.access")


def request_id_of(given: str | None) -> str:
    """The caller's id when it is a plausible one, else a new random one."""
    if given is not None and _VALID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Pure ASGI middleware: the request id in logs and in the response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == HEADER.encode():
                given = value.decode("latin-1")
                break
        request_id = request_id_of(given)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                headers.append((HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with log_fields(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if scope.get("path") not in QUIET_PATHS:
                    self._access(scope, status, start)

    @staticmethod
    def _access(scope: Scope, status: int, start: float) -> None:
        access_log.info(
            "%s %s %d",
            scope.get("method", ""),
            scope.get("path", ""),
            status,
            extra={
                "method": scope.get("method", ""),
                "path": scope.get("path", ""),
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            },
        )

"""An HTTP proxy in front of the private Elasticsearch that can answer like an overloaded node.

It forwards every request unchanged, except that while a fault window is open it answers
requests whose path matches with Elasticsearch's own error shape, e.g. 429
``es_rejected_execution_exception`` (the search thread pool's queue is full), which a busy
production cluster does under load. It runs in the test's event loop (uvicorn on a
pre-bound 127.0.0.1 socket) and only ever forwards to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import uvicorn

_HOP = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}
_RESP_DROP = {"content-length", "transfer-encoding", "connection", "content-encoding"}

REJECTED = {
    "error": {
        "root_cause": [
            {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution of search (queue capacity 1000)",
            }
        ],
        "type": "es_rejected_execution_exception",
        "reason": "rejected execution of search (queue capacity 1000)",
    },
    "status": 429,
}


class FaultProxy:
    """Forwards to `upstream`; `fail_for(seconds)` opens a window of injected errors."""

    def __init__(self, upstream: str, paths: tuple[str, ...] = ("/_search",)) -> None:
        if not upstream.startswith("http://127.0.0.1:"):
            raise ValueError("the fault proxy only forwards to 127.0.0.1")
        self.upstream = upstream.rstrip("/")
        self.paths = paths
        self.status = 429
        self.payload: dict[str, Any] = REJECTED
        self.fail_until = 0.0
        self.injected = 0
        self.forwarded = 0
        self._client = httpx.AsyncClient(timeout=120)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

        self.fail_count = 0

    def fail_for(self, seconds: float) -> None:
        self.fail_until = time.monotonic() + seconds

    def fail_next(self, count: int) -> None:
        """Answer the next `count` matching requests with the error, whenever they come
        (progress-driven, unlike `fail_for`: a fast client cannot slip past the window)."""
        self.fail_count = count

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path: str = scope["path"]
        matches = any(p in path for p in self.paths)
        if matches and (time.monotonic() < self.fail_until or self.fail_count > 0):
            self.fail_count = max(0, self.fail_count - 1)
            self.injected += 1
            await self._reply(
                send,
                self.status,
                [(b"content-type", b"application/json"), (b"x-elastic-product", b"Elasticsearch")],
                orjson.dumps(self.payload),
            )
            return
        url = self.upstream + scope.get("raw_path", path.encode()).decode()
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        try:
            resp = await self._client.request(scope["method"], url, content=body, headers=headers)
        except httpx.TransportError:
            await self._reply(send, 502, [(b"content-type", b"text/plain")], b"upstream down")
            return
        self.forwarded += 1
        out = [
            (k.encode(), v.encode()) for k, v in resp.headers.items() if k.lower() not in _RESP_DROP
        ]
        await self._reply(send, resp.status_code, out, resp.content)

    @staticmethod
    async def _reply(
        send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FaultProxy]:
        config = uvicorn.Config(
            self, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=30
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[self._sock]))
        try:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            yield self
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
            await self._client.aclose()
            self._sock.close()

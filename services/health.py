"""The HTTP endpoints of a long-running worker (the indexer, the alerts worker, sync-prefect):
Prometheus metrics plus liveness and readiness.

uvicorn serves them on the worker's own event loop, so a wedged loop stops answering and
the liveness probe fails; /metrics is prometheus_client's own ASGI app (the default registry,
content negotiation and compression included):

- `GET /metrics` — Prometheus text format;
- `GET /livez`   — 200 while the event loop answers;
- `GET /readyz`  — 200 once the worker has started (`ready`), 503 before and while stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from prometheus_client import make_asgi_app
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("services.health")


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the worker that embeds it owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def serve_or_raise(self) -> None:
        """`serve()`, with uvicorn's exit on a failed bind raised as OSError instead (a
        SystemExit in a task would stop the worker's event loop)."""
        try:
            await self.serve()
        except SystemExit as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise OSError(f"cannot serve health and metrics on {where}") from exc


class HealthServer:
    """Serves /metrics, /livez and /readyz on `host:port` (port 0: any free port)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.ready = False
        self._metrics = make_asgi_app()
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def bound_port(self) -> int:
        """The actual port (useful with port 0)."""
        assert self._server is not None and self._server.servers
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be bound."""
        config = uvicorn.Config(
            self._app,
            interface="asgi3",  # a bound method: uvicorn would guess ASGI 2
            host=self.host,
            port=self.port,
            lifespan="off",
            access_log=False,
            log_config=None,  # uvicorn's loggers propagate to the worker's JSON handler
            log_level="warning",  # its start-up lines would repeat ours (and say Ctrl+C)
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve_or_raise())
        while not server.started:
            if task.done():  # it could not bind
                task.result()
                raise OSError(f"health and metrics on {self.host}:{self.port} stopped at start")
            await asyncio.sleep(0.01)
        self._server, self._task = server, task
        log.info("metrics and health on %s:%d", self.host, self.bound_port)

    async def stop(self) -> None:
        """Stop listening."""
        self.ready = False
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await self._metrics(scope, receive, send)
            return
        if path == "/livez":
            response = PlainTextResponse("ok\n")
        elif path == "/readyz":
            ok = self.ready
            response = PlainTextResponse("ready\n" if ok else "not ready\n", 200 if ok else 503)
        else:
            response = PlainTextResponse("not found\n", 404)
        await response(scope, receive, send)

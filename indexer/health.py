"""The indexer's tiny HTTP server: Prometheus metrics plus liveness and readiness.

It runs on the indexer's own event loop (`asyncio.start_server`, no extra
dependency), so a wedged loop stops answering and the liveness probe fails:

- `GET /metrics` — Prometheus text format (the default registry);
- `GET /livez`   — 200 while the event loop answers;
- `GET /readyz`  — 200 once the consumer has started, 503 before and while stopping.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("indexer.health")


class HealthServer:
    """Serves /metrics, /livez and /readyz on `host:port`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.ready = False
        self._server: asyncio.Server | None = None

    @property
    def bound_port(self) -> int:
        """The actual port (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        log.info("metrics and health on %s:%d", self.host, self.bound_port)

    async def stop(self) -> None:
        """Stop listening."""
        self.ready = False
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            status, ctype, body = self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _route(self, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if path == "/livez":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            if self.ready:
                return "200 OK", text, b"ready\n"
            return "503 Service Unavailable", text, b"not ready\n"
        return "404 Not Found", text, b"not found\n"

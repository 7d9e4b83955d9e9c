"""The indexer's HealthServer on its own (no Kafka needed)."""

from __future__ import annotations

import httpx
import pytest

from services.health import HealthServer


async def test_health_server_routes() -> None:
    server = HealthServer("127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.bound_port}") as http:
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get("/readyz")).status_code == 503
            server.ready = True
            assert (await http.get("/readyz")).status_code == 200
            metrics = await http.get("/metrics?x=1")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert (await http.get("/")).status_code == 404
    finally:
        await server.stop()


async def test_a_taken_port_raises_and_stop_closes_the_port() -> None:
    first = HealthServer("127.0.0.1", 0)
    await first.start()
    port = first.bound_port
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await HealthServer("127.0.0.1", port).start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert "python_info" in (await http.get("/metrics")).text  # the default registry
    finally:
        await first.stop()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/livez")

"""The API mode's adapters without servers: the checkpoint store on a temporary SQLite file,
the REST adapter on httpx's mock transport (errors a user meets, retries, 404 = absent)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from services.errors import BackendUnavailableError
from services.sync.api_plan import Published, Ref
from services.sync.api_state import ApiSyncStore
from services.sync.errors import SyncSetupError
from services.sync.prefect_api import (
    PrefectAPI,
    PrefectAuth,
    PrefectAuthError,
    events_socket_url,
    subscription_filter,
)

ID = "b92ea4c3-8f22-43c3-bc6c-639849a975d3"
URL = "http://prefect.test/api"


def test_the_store_survives_a_reopen_and_refuses_another_source(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = ApiSyncStore(path, URL)
    ref, other = Ref("artifact", ID), Ref("flow", ID)
    store.record([(ref, Published(5, 4, "d1")), (other, Published(7, 7, "d2", deleted=True))])
    store.record([(ref, Published(6, 6, "d3"))])
    when = datetime(2026, 11, 30, 21, 0, tzinfo=UTC)
    store.save_event_position(when)
    store.mark_snapshot_complete()
    store.close()

    again = ApiSyncStore(path, URL)
    assert again.get([ref, other, Ref("task_run", ID)]) == {
        ref: Published(6, 6, "d3"),
        other: Published(7, 7, "d2", deleted=True),
    }
    assert again.live_ids("artifact") == {ID} and again.live_ids("flow") == set()
    assert again.event_position == when and again.snapshot_complete
    assert again.counts() == {"artifact": 1}
    again.close()
    with pytest.raises(SyncSetupError, match="give this Prefect its own --state-file"):
        ApiSyncStore(path, "http://elsewhere.test/api")


def api(handler: httpx.MockTransport, auth: PrefectAuth | None = None) -> PrefectAPI:
    return PrefectAPI(
        URL,
        auth or PrefectAuth(),
        requests_per_second=1000,
        attempts=3,
        retry_wait_s=0.01,
        transport=handler,
    )


async def test_a_rejected_key_is_a_setup_error_that_says_so() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(401, json={"detail": "Invalid API key"})

    client = api(httpx.MockTransport(handler), PrefectAuth(api_key="pnu_bad"))
    with pytest.raises(PrefectAuthError, match=r"answered 401.*the API key was rejected"):
        await client.check()
    assert seen == ["Bearer pnu_bad"]  # asked once: a 401 is not retried
    await client.close()


async def test_basic_auth_for_a_self_hosted_server() -> None:
    auth = PrefectAuth(auth_string="admin:secret")
    expected = "Basic " + base64.b64encode(b"admin:secret").decode()
    assert auth.headers() == {"Authorization": expected} and auth.token() == "admin:secret"

    def handler(request: httpx.Request) -> httpx.Response:
        ok = request.headers.get("authorization") == expected
        return httpx.Response(200, json=[]) if ok else httpx.Response(403)

    client = api(httpx.MockTransport(handler), auth)
    await client.check()
    await client.close()


async def test_a_url_that_is_not_a_prefect_api_is_a_setup_error() -> None:
    client = api(httpx.MockTransport(lambda _: httpx.Response(404, text="Not Found")))
    with pytest.raises(SyncSetupError, match=r"is not a Prefect API.*must end with /api"):
        await client.check()
    await client.close()

    html = api(httpx.MockTransport(lambda _: httpx.Response(200, text="<html>")))
    with pytest.raises(SyncSetupError, match="does not answer like a Prefect API"):
        await html.check()
    await html.close()


async def test_an_unreachable_url_is_a_setup_error_at_start() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = api(httpx.MockTransport(refuse))
    with pytest.raises(SyncSetupError, match=r"cannot reach Prefect.*check --api-url"):
        await client.check()
    assert client.requests == 3  # retried, then given up
    # once it has answered, an outage is transient: the session loop retries
    with pytest.raises(BackendUnavailableError):
        await client.check(unreachable_is_fatal=False)
    await client.close()


async def test_5xx_and_429_are_retried_then_reads_answer() -> None:
    answers = [httpx.Response(503), httpx.Response(429), httpx.Response(200, json={"id": ID})]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/api/artifacts/{ID}"
        return answers.pop(0)

    client = api(httpx.MockTransport(handler))
    assert await client.read(Ref("artifact", ID)) == {"id": ID}
    await client.close()

    failing = api(httpx.MockTransport(lambda _: httpx.Response(500)))
    with pytest.raises(BackendUnavailableError, match="failed 3 times"):
        await failing.read(Ref("artifact", ID))
    await failing.close()


async def test_a_404_read_is_absent_and_listing_pages_ask_the_reconcile_order() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404, json={"detail": "Artifact not found."})
        bodies.append(request.content)
        return httpx.Response(200, json=[{"id": ID}])

    client = api(httpx.MockTransport(handler))
    assert await client.read(Ref("task_run", ID)) is None
    assert await client.list_page("flow_run", 400, 200) == [{"id": ID}]
    assert bodies == [b'{"sort":"ID_DESC","offset":400,"limit":200}']
    await client.close()


def test_the_event_socket_and_its_filter() -> None:
    assert events_socket_url("https://x.test/api/") == "wss://x.test/api/events/out"
    assert events_socket_url("http://127.0.0.1:4200/api") == "ws://127.0.0.1:4200/api/events/out"
    since = datetime(2026, 11, 30, tzinfo=UTC)
    wanted = subscription_filter(since, since)
    assert wanted["occurred"]["since"] == "2026-11-30T00:00:00+00:00"
    assert "prefect.flow-run.heartbeat" in wanted["event"]["exclude_name"]

"""Adapter: Prefect's REST API and its event websocket, for the API mode of `sync-prefect`.

- `PrefectAPI.read(ref)`: `GET /{collection}/{id}` -> the entity's JSON, or None on 404;
- `PrefectAPI.list_page(entity, offset, limit)`: `POST /{collection}/filter` in the
  reconcile order (services/sync/api_plan.py);
- `PrefectAPI.check()`: a wrong URL or a rejected key is a `SyncSetupError` saying which;
- `subscribe(...)`: Prefect's `/events/out` websocket (subprotocol `prefect`: an `auth`
  message, `auth_success`, a `filter` message, then `{"type": "event", ...}` messages),
  spoken with the `websockets` library (docs/adr/0009 says why not Prefect's SDK).

Every HTTP request waits for the rate limiter (aiolimiter) and is retried by tenacity on
a connection failure, a 429 or a 5xx; what still fails is `BackendUnavailableError`, which
the bridge's session loop retries with backoff. Errors::

    SyncSetupError (PermanentError)   exits 1 with the message
    +-- PrefectAuthError              401 / 403 on REST, 1008 / 401 / 403 on the websocket
    BackendUnavailableError           Prefect unreachable or failing: a new session later
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from services.errors import BackendUnavailableError
from services.sync.api_plan import API_COLLECTIONS, EVENT_PREFIXES, LISTING_SORT, Ref
from services.sync.errors import SyncSetupError

EXCLUDED_EVENTS = ("prefect.flow-run.heartbeat",)
"""Sent every few seconds while a flow runs and changes nothing we index."""


class PrefectAuthError(SyncSetupError):
    """Prefect refused the credentials (or their absence)."""


class _RetryableStatusError(Exception):
    """A 429 or 5xx worth another attempt."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(
            f"{response.request.method} {response.request.url}: {response.status_code}"
        )
        self.response = response


@dataclass(frozen=True)
class PrefectAuth:
    """How to authenticate: Prefect Cloud's API key (Bearer) or a self-hosted server's
    `PREFECT_SERVER_API_AUTH_STRING` (`user:password`, HTTP basic); at most one."""

    api_key: str | None = None
    auth_string: str | None = None

    def headers(self) -> dict[str, str]:
        """The HTTP headers of every request and of the websocket's upgrade."""
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        if self.auth_string:
            encoded = base64.b64encode(self.auth_string.encode()).decode()
            return {"Authorization": f"Basic {encoded}"}
        return {}

    def token(self) -> str | None:
        """The token of the websocket's `auth` message."""
        return self.api_key or self.auth_string


def events_socket_url(api_url: str) -> str:
    """`https://host/api` -> `wss://host/api/events/out` (Prefect's rule)."""
    base = api_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/events/out"


def subscription_filter(since: datetime, until: datetime) -> dict[str, Any]:
    """The `filter` message's filter (Prefect's EventFilter, as JSON)."""
    return {
        "occurred": {"since": since.isoformat(), "until": until.isoformat()},
        "event": {"prefix": list(EVENT_PREFIXES), "exclude_name": list(EXCLUDED_EVENTS)},
    }


class PrefectAPI:
    """Prefect's REST API at `api_url`, paced and retried."""

    def __init__(
        self,
        api_url: str,
        auth: PrefectAuth,
        *,
        requests_per_second: float = 20.0,
        timeout_s: float = 30.0,
        attempts: int = 5,
        retry_wait_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.auth = auth
        self.attempts = attempts
        self.retry_wait_s = retry_wait_s
        self._limiter = AsyncLimiter(requests_per_second, 1.0)
        self._client = httpx.AsyncClient(
            base_url=self.api_url,
            headers=auth.headers(),
            timeout=timeout_s,
            transport=transport,
        )
        self.requests = 0

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((httpx.TransportError, _RetryableStatusError)),
            wait=wait_exponential_jitter(initial=self.retry_wait_s, max=10),
            stop=stop_after_attempt(self.attempts),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._limiter:
                        self.requests += 1
                        response = await self._client.request(method, path, json=body)
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _RetryableStatusError(response)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise BackendUnavailableError(
                f"Prefect at {self.api_url} failed {self.attempts} times: {cause}"
            ) from cause
        if response.status_code in (401, 403):
            raise PrefectAuthError(
                f"Prefect at {self.api_url} answered {response.status_code} to "
                f"{method} {path}: {self._credentials()} (--api-key / SYNC_API_KEY for "
                "Prefect Cloud, --auth-string / SYNC_API_AUTH_STRING for a server with basic auth)"
                + _detail(response)
            )
        return response

    def _credentials(self) -> str:
        if self.auth.api_key:
            return "the API key was rejected"
        if self.auth.auth_string:
            return "the auth string was rejected"
        return "it needs credentials"

    async def check(self, unreachable_is_fatal: bool = True) -> None:
        """Fail with a clear message unless `api_url` is a Prefect API that takes the key.

        An unreachable Prefect is a setup error at the first start (a wrong URL, most
        likely) and a transient one afterwards (Prefect restarting)."""
        try:
            response = await self._request("POST", "/flows/filter", {"limit": 1})
        except BackendUnavailableError as exc:
            if not unreachable_is_fatal:
                raise
            raise SyncSetupError(
                f"cannot reach Prefect at {self.api_url} ({exc.__cause__ or exc}): check "
                "--api-url (Prefect Cloud: https://api.prefect.cloud/api/accounts/<account>/"
                "workspaces/<workspace>; a server: http://host:4200/api)"
            ) from exc
        if response.status_code == 404:
            raise SyncSetupError(
                f"{self.api_url} is not a Prefect API (POST /flows/filter answered 404): "
                "the URL must end with /api (or .../workspaces/<id> on Prefect Cloud)"
            )
        if response.status_code != 200 or not isinstance(_json(response), list):
            raise SyncSetupError(
                f"{self.api_url} does not answer like a Prefect API "
                f"(POST /flows/filter: {response.status_code}){_detail(response)}"
            )

    async def read(self, ref: Ref) -> dict[str, Any] | None:
        """The entity's JSON, or None when Prefect answers 404."""
        response = await self._request("GET", f"/{API_COLLECTIONS[ref.entity]}/{ref.id}")
        if response.status_code == 404:
            return None
        if response.status_code == 422:  # not a UUID Prefect accepts: treat as absent
            return None
        _expect_ok(response)
        body = _json(response)
        if not isinstance(body, dict) or str(body.get("id")) != ref.id:
            raise BackendUnavailableError(f"GET {response.request.url}: unexpected body")
        return body

    async def count(self, entity: str) -> int | None:
        """How many of `entity` Prefect holds (for the initial pass's progress)."""
        response = await self._request("POST", f"/{API_COLLECTIONS[entity]}/count", {})
        body = _json(response)
        return body if response.status_code == 200 and isinstance(body, int) else None

    async def list_page(self, entity: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """One page of a reconcile pass's listing of `entity`."""
        body = {"sort": LISTING_SORT[entity], "offset": offset, "limit": limit}
        response = await self._request("POST", f"/{API_COLLECTIONS[entity]}/filter", body)
        _expect_ok(response)
        page = _json(response)
        if not isinstance(page, list):
            raise BackendUnavailableError(f"POST {response.request.url}: not a list")
        return [item for item in page if isinstance(item, dict)]

    async def subscribe(
        self, since: datetime, now: datetime, on_open: Callable[[], None] = lambda: None
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Prefect's events from `since` on (Prefect replays the recent past from its
        database, then streams): each event's JSON. Ends only by an error."""
        url = events_socket_url(self.api_url)
        try:
            async with connect(
                url,
                subprotocols=[Subprotocol("prefect")],
                additional_headers=self.auth.headers(),
                open_timeout=30,
                max_size=2**24,
            ) as socket:
                await socket.send(
                    orjson.dumps({"type": "auth", "token": self.auth.token()}).decode()
                )
                try:
                    answer = orjson.loads(await socket.recv())
                except ConnectionClosed as exc:
                    reason = exc.rcvd.reason if exc.rcvd is not None else ""
                    if exc.rcvd is not None and exc.rcvd.code == 1008:
                        raise PrefectAuthError(
                            f"Prefect's event stream at {url} refused the credentials: {reason}"
                        ) from exc
                    raise
                if answer.get("type") != "auth_success":
                    raise PrefectAuthError(f"Prefect's event stream at {url} answered {answer}")
                until = now + timedelta(days=3650)
                await socket.send(
                    orjson.dumps(
                        {"type": "filter", "filter": subscription_filter(since, until)}
                    ).decode()
                )
                on_open()
                async for raw in socket:
                    message = orjson.loads(raw)
                    if isinstance(message, dict) and message.get("type") == "event":
                        event = message.get("event")
                        if isinstance(event, dict):
                            yield event
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise PrefectAuthError(
                    f"Prefect's event stream at {url} answered {status}: the key was rejected"
                ) from exc
            if status == 404:
                raise SyncSetupError(f"{url} does not exist: is --api-url a Prefect API?") from exc
            raise BackendUnavailableError(f"event stream {url}: HTTP {status}") from exc
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as exc:
            raise BackendUnavailableError(f"event stream {url}: {exc!r}") from exc


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _detail(response: httpx.Response) -> str:
    text = response.text[:200].strip()
    return f" ({text})" if text else ""


def _expect_ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise BackendUnavailableError(
            f"{response.request.method} {response.request.url}: {response.status_code}"
            + _detail(response)
        )


def is_uuid(value: str) -> bool:
    """Whether `value` is a UUID (ids in listings are; a bad one is skipped)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True

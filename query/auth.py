"""Optional authentication of the query API, the way Prefect clients send it.

Two kinds of credentials, either or both configured in `QuerySettings`:

* ``auth_string`` (``QUERY_AUTH_STRING``), Prefect server's ``user:password`` string: a
  Prefect client with ``PREFECT_API_AUTH_STRING`` sends it as HTTP Basic
  (``Authorization: Basic base64(user:password)``);
* ``api_keys`` (``QUERY_API_KEYS``, a JSON list): bearer tokens, as a Prefect client with
  ``PREFECT_API_KEY`` sends them (``Authorization: Bearer <key>``).

When neither is configured nothing is installed. Otherwise every request needs one valid
credential, except the probes in `PUBLIC_PATHS` (liveness and readiness tell only whether
the service is up, and orchestrators call them without credentials). Everything else is
protected, including ``/metrics``, ``/docs`` and ``/openapi.json``. A missing, malformed
or wrong credential gets the same 401; comparisons are constant-time; no credential, given
or expected, is ever logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from services.config import QuerySettings

PUBLIC_PATHS: frozenset[str] = frozenset({"/api/health", "/api/ready"})
"""Exact paths answered without credentials."""

_UNAUTHORIZED = orjson.dumps({"detail": "Not authenticated."})


def _digest(value: bytes) -> bytes:
    """Fixed-length form, so comparisons leak neither content nor length."""
    return hashlib.sha256(value).digest()


@dataclass(frozen=True)
class Credentials:
    """Digests of the accepted credentials (never the secrets themselves)."""

    basic: bytes | None
    bearer: tuple[bytes, ...]

    @classmethod
    def from_settings(cls, settings: QuerySettings) -> Credentials | None:
        """The configured credentials, or None when authentication is off."""
        auth = settings.auth_string.get_secret_value() if settings.auth_string else ""
        keys = tuple(k.get_secret_value() for k in settings.api_keys)
        basic = _digest(auth.encode()) if auth else None
        bearer = tuple(_digest(k.encode()) for k in keys if k)
        if basic is None and not bearer:
            return None
        return cls(basic, bearer)

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401."""
        return 'Basic realm="prefect"' if self.basic is not None else "Bearer"


def is_authorized(authorization: str | None, credentials: Credentials) -> bool:
    """Whether an ``Authorization`` header value carries one accepted credential."""
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "basic" and credentials.basic is not None:
        try:
            given = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return False
        return hmac.compare_digest(_digest(given), credentials.basic)
    if scheme == "bearer" and credentials.bearer:
        try:
            given_digest = _digest(value.encode("utf-8"))
        except UnicodeEncodeError:
            return False
        matched = False
        for key in credentials.bearer:  # no early exit: time does not tell which key
            matched |= hmac.compare_digest(given_digest, key)
        return matched
    return False


class AuthMiddleware:
    """Pure ASGI middleware: 401 before the request reaches any route."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if is_authorized(header, self.credentials):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_UNAUTHORIZED)).encode()),
                    (b"www-authenticate", self.credentials.challenge.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})


def install_auth(app: FastAPI, settings: QuerySettings) -> None:
    """Protect `app` when credentials are configured; a no-op otherwise."""
    credentials = Credentials.from_settings(settings)
    if credentials is not None:
        app.add_middleware(AuthMiddleware, credentials=credentials)

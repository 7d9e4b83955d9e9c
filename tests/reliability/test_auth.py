"""Authentication of the query API (query/auth.py) and secret handling of the clients.

With QUERY_AUTH_STRING and/or QUERY_API_KEYS set, every route except the probes needs a
valid credential; a missing, malformed or wrong one is a 401 with a fixed body. No secret
appears in any response or log line. Kafka (TLS/SASL) and Elasticsearch (TLS, API key or
basic auth) credentials reach the client arguments and never their representations.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import certifi
import httpx
import pytest
from elasticsearch import AsyncElasticsearch
from fastapi.routing import APIRoute
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from starlette.routing import Route

from artifact_search.api import create_api
from indexer.app import Indexer
from query.auth import PUBLIC_PATHS, Credentials, is_authorized
from services.config import ElasticsearchSettings, IndexerSettings, KafkaSettings, QuerySettings
from services.es.admin import drop_indices, ensure_indices
from services.es.client import make_es_client
from services.es.indices import IndexNames
from services.kafka import broker_kwargs, producer_kwargs

AUTH_STRING = "admin:Pa55-auth-string-7d1f"
API_KEYS = ["pnu_key-one-90ab", "pnu_key-two-cd12"]
SECRETS = [AUTH_STRING, "Pa55-auth-string-7d1f", *API_KEYS]


def basic(value: str) -> str:
    return "Basic " + base64.b64encode(value.encode()).decode()


def settings(**kwargs: Any) -> QuerySettings:
    return QuerySettings(**kwargs)


# ------------------------------------------------------------------------------------------
# the pure check
# ------------------------------------------------------------------------------------------
def test_no_credentials_configured_means_auth_is_off() -> None:
    assert Credentials.from_settings(settings()) is None
    assert Credentials.from_settings(settings(auth_string="", api_keys=[""])) is None


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (basic(AUTH_STRING), True),
        ("basic " + basic(AUTH_STRING).split()[1], True),  # scheme is case-insensitive
        (f"Bearer {API_KEYS[0]}", True),
        (f"Bearer {API_KEYS[1]}", True),
        (f"bearer  {API_KEYS[1]} ", True),
        (None, False),
        ("", False),
        ("Basic", False),
        ("Bearer", False),
        ("Bearer ", False),
        (basic("admin:wrong"), False),
        (basic("admin"), False),
        (basic(AUTH_STRING + "x"), False),
        (basic(AUTH_STRING[:-1]), False),
        ("Basic !!!not-base64!!!", False),
        ("Basic " + base64.b64encode(AUTH_STRING.encode()).decode()[:-2], False),
        ("Basic ñ", False),
        (f"Bearer {API_KEYS[0]}x", False),
        (f"Bearer {API_KEYS[0][:-1]}", False),
        (f"Bearer {AUTH_STRING}", False),
        (f"Token {API_KEYS[0]}", False),
        (API_KEYS[0], False),
        (f"Basic {API_KEYS[0]}", False),
        ("Bearer \u00ff\u0100", False),
    ],
)
def test_is_authorized(header: str | None, ok: bool) -> None:
    creds = Credentials.from_settings(settings(auth_string=AUTH_STRING, api_keys=API_KEYS))
    assert creds is not None
    assert is_authorized(header, creds) is ok


def test_each_kind_alone() -> None:
    only_basic = Credentials.from_settings(settings(auth_string=AUTH_STRING))
    assert only_basic is not None
    assert is_authorized(basic(AUTH_STRING), only_basic)
    assert not is_authorized(f"Bearer {AUTH_STRING}", only_basic)
    only_keys = Credentials.from_settings(settings(api_keys=API_KEYS))
    assert only_keys is not None
    assert is_authorized(f"Bearer {API_KEYS[1]}", only_keys)
    assert not is_authorized(basic(AUTH_STRING), only_keys)
    assert only_basic.challenge.startswith("Basic")
    assert only_keys.challenge == "Bearer"


def test_credentials_hold_digests_not_secrets() -> None:
    creds = Credentials.from_settings(settings(auth_string=AUTH_STRING, api_keys=API_KEYS))
    text = repr(creds) + str(vars(creds) if hasattr(creds, "__dict__") else "")
    for secret in SECRETS:
        assert secret not in text
        assert secret.encode() not in repr(creds).encode()


# ------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------
@pytest.fixture
async def es_prefix(elasticsearch_url: str) -> AsyncIterator[str]:
    names = IndexNames(f"auth-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url)
    await ensure_indices(es, names)
    try:
        yield names.prefix
    finally:
        await drop_indices(es, names)
        await es.close()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, concrete path) of every route the app serves, docs included."""
    out = []
    for route in app.routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router entry
        if included is not None:
            out += _routes(included)
            continue
        if not isinstance(route, APIRoute | Route):
            continue
        path = route.path.replace("{artifact_id}", str(uuid.uuid4())).replace("{key}", "k")
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                out.append((method, path))
    return out


async def test_every_route_but_the_probes_requires_credentials(
    elasticsearch_url: str, es_prefix: str
) -> None:
    app = create_api(
        settings(auth_string=AUTH_STRING, api_keys=API_KEYS),
        ElasticsearchSettings(url=elasticsearch_url, index_prefix=es_prefix),
    )
    routes = _routes(app)
    paths = {p for _, p in routes}
    for expected in (
        "/metrics",
        "/docs",
        "/openapi.json",
        "/api/artifacts/filter",
        "/ext/v1/saved-searches",
    ):
        assert expected in paths
    wrong = [
        {},
        {"authorization": basic("admin:nope")},
        {"authorization": f"Bearer not-{API_KEYS[0]}"},
        {"authorization": "Basic %%%"},
        {"x-api-key": API_KEYS[0]},
    ]
    right = [{"authorization": basic(AUTH_STRING)}, {"authorization": f"Bearer {API_KEYS[0]}"}]
    async with _client(app) as client:
        for method, path in routes:
            body = {} if method == "POST" else None
            for headers in wrong:
                resp = await client.request(method, path, json=body, headers=headers)
                if path in PUBLIC_PATHS:
                    assert resp.status_code == 200, (path, resp.status_code)
                else:
                    assert resp.status_code == 401, (method, path, headers)
                    assert resp.json() == {"detail": "Not authenticated."}
                    assert resp.headers["www-authenticate"].startswith("Basic")
            for headers in right:
                resp = await client.request(method, path, json=body, headers=headers)
                assert resp.status_code != 401, (method, path)
                assert resp.status_code < 500, (method, path, resp.text[:200])
        resp = await client.post("/api/artifacts/filter", json={"limit": 1}, headers=right[1])
        assert resp.status_code == 200 and resp.json() == []
        # no path trick reaches a protected route through a public one
        for path in (
            "/api/health/../artifacts/count",
            "/api/health/",
            "//api/health",
            "/API/health",
        ):
            resp = await client.post(path, json={})
            assert resp.status_code in (401, 404, 405, 307), (path, resp.status_code)
            assert resp.status_code == 401 or "count" not in path


async def test_auth_off_leaves_every_route_open(elasticsearch_url: str, es_prefix: str) -> None:
    app = create_api(
        settings(), ElasticsearchSettings(url=elasticsearch_url, index_prefix=es_prefix)
    )
    async with _client(app) as client:
        assert (await client.post("/api/artifacts/count", json={})).json() == 0
        assert (await client.get("/metrics")).status_code == 200


async def test_no_secret_in_responses_or_logs(
    elasticsearch_url: str,
    es_prefix: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    query = settings(auth_string=AUTH_STRING, api_keys=API_KEYS, max_body_bytes=2048)
    es_settings = ElasticsearchSettings(url=elasticsearch_url, index_prefix=es_prefix)
    texts: list[str] = [repr(query), str(query), repr(es_settings)]
    ok = {"authorization": f"Bearer {API_KEYS[1]}"}
    requests: list[tuple[str, str, dict[str, str], Any]] = [
        ("GET", "/api/artifacts/filter", {}, None),
        ("POST", "/api/artifacts/filter", {"authorization": basic(AUTH_STRING + "!")}, {}),
        ("POST", "/api/artifacts/filter", {"authorization": f"Bearer {API_KEYS[0]}!"}, {}),
        ("POST", "/api/artifacts/filter", ok, {"limit": "x", "auth": AUTH_STRING[:3]}),
        ("POST", "/api/artifacts/filter", ok, {"limit": 10**9}),
        ("POST", "/api/artifacts/count", ok, {"artifacts": {"bogus": 1}}),
        ("POST", "/api/artifacts/count", ok, {"x": "y" * 5000}),
        ("GET", f"/api/artifacts/{uuid.uuid4()}", ok, None),
        ("GET", "/api/artifacts/nokey/latest", ok, None),
        ("GET", "/openapi.json", ok, None),
        ("GET", "/metrics", ok, None),
    ]
    app = create_api(query, es_settings)
    # Elasticsearch unreachable: the 503 path must not leak either
    down = create_api(query, ElasticsearchSettings(url="http://127.0.0.1:9", index_prefix="x-"))
    async with _client(app) as client, _client(down) as down_client:
        for method, path, headers, body in requests:
            resp = await client.request(method, path, headers=headers, json=body)
            assert resp.status_code < 500
            texts.append(resp.text)
            texts.append(str(resp.headers))
        resp = await down_client.post("/api/artifacts/filter", json={}, headers=ok)
        assert resp.status_code == 503
        texts += [resp.text, str(resp.headers)]
        resp = await down_client.get("/api/ready")
        texts.append(resp.text)
    # indexer clients built with secrets (not started): nothing logged or shown
    kafka = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=AUTH_STRING,
    )
    indexer = Indexer(
        kafka,
        ElasticsearchSettings(url=elasticsearch_url, api_key=API_KEYS[0], index_prefix="x-"),
        IndexerSettings(),
    )
    texts += [repr(kafka), repr(indexer.es), repr(indexer.es_settings)]
    await indexer.es.close()
    out, err = capfd.readouterr()
    texts += [caplog.text, out, err]
    blob = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in blob
        assert base64.b64encode(secret.encode()).decode() not in blob


# ------------------------------------------------------------------------------------------
# Kafka and Elasticsearch client arguments carry TLS and credentials
# ------------------------------------------------------------------------------------------
def _broker_driver_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """What FastStream hands aiokafka for `broker_kwargs(settings)` (and that it builds)."""
    kwargs = broker_kwargs(settings)
    KafkaBroker(**kwargs)  # FastStream accepts the arguments
    return {
        "bootstrap_servers": kwargs["bootstrap_servers"],
        **parse_security(kwargs.get("security")),
    }


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_SSL", "PLAIN"),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    ],
)
def test_kafka_sasl_arguments(protocol: str, mechanism: str) -> None:
    k = KafkaSettings(
        bootstrap_servers="broker:9093",
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username="indexer",
        sasl_password="kafka-secret-31",
        ssl_cafile=certifi.where(),
    )
    for kwargs in (producer_kwargs(k), _broker_driver_kwargs(k)):
        assert kwargs["security_protocol"] == protocol
        assert kwargs["sasl_mechanism"] == mechanism
        assert kwargs["sasl_plain_username"] == "indexer"
        assert kwargs["sasl_plain_password"] == "kafka-secret-31"
        ctx = kwargs.get("ssl_context")
        if protocol == "SASL_SSL":
            assert ctx.verify_mode.name == "CERT_REQUIRED" and ctx.check_hostname
            assert ctx.cert_store_stats()["x509_ca"] > 0  # the CA file was loaded
        else:
            assert ctx is None
    assert "kafka-secret-31" not in repr(k) and "kafka-secret-31" not in str(k.model_dump())


def test_kafka_ssl_only_and_plaintext_arguments() -> None:
    k = KafkaSettings(security_protocol="SSL", ssl_cafile=certifi.where())
    for kwargs in (producer_kwargs(k), _broker_driver_kwargs(k)):
        assert kwargs["security_protocol"] == "SSL" and kwargs["ssl_context"] is not None
        assert "sasl_plain_password" not in kwargs
    for kwargs in (producer_kwargs(KafkaSettings()), _broker_driver_kwargs(KafkaSettings())):
        assert kwargs.get("security_protocol", "PLAINTEXT") == "PLAINTEXT"
        assert kwargs.get("ssl_context") is None and "sasl_plain_password" not in kwargs


async def test_elasticsearch_api_key_and_tls_arguments() -> None:
    es = make_es_client(
        ElasticsearchSettings(
            url="https://es.internal:9200", api_key="es-api-key-77", ca_certs=certifi.where()
        )
    )
    try:
        assert es._headers["authorization"] == "ApiKey es-api-key-77"
        node = next(iter(es.transport.node_pool.all()))
        assert node.config.scheme == "https"
        assert node.config.ca_certs == certifi.where()
        assert node.config.verify_certs
        assert "es-api-key-77" not in repr(es) and "es-api-key-77" not in repr(es._headers)
    finally:
        await es.close()


async def test_elasticsearch_basic_auth_arguments() -> None:
    settings_ = ElasticsearchSettings(
        url="https://es.internal:9200", username="elastic", password="es-password-88"
    )
    es = make_es_client(settings_)
    try:
        want = "Basic " + base64.b64encode(b"elastic:es-password-88").decode()
        assert es._headers["authorization"] == want
        assert "es-password-88" not in repr(es) and "es-password-88" not in repr(settings_)
    finally:
        await es.close()

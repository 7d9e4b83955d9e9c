"""Tracing's switch and the correlation ids, without servers (services/telemetry.py,
services/logging.py, query/request_id.py, indexer/tracing.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from indexer.tracing import batch_attributes, producer_links
from query.request_id import RequestIdMiddleware, request_id_of
from services.logging import JsonFormatter, log_fields
from services.telemetry import TelemetrySettings

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def _run(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_an_endpoint_nothing_is_installed() -> None:
    """No OTLP endpoint: no SDK imported, no provider, no instrumentation, no middleware."""
    code = """
import sys
from fastapi import FastAPI
from opentelemetry import trace
from services import telemetry
with telemetry.tracing("api", telemetry.TelemetrySettings()):
    assert telemetry.tracer_provider() is None
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    app = FastAPI()
    telemetry.instrument_fastapi(app)
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    assert telemetry.kafka_middlewares() == ()
    bad = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk",
        "opentelemetry.exporter", "opentelemetry.instrumentation", "faststream.opentelemetry")))
    print(bad)
"""
    assert _run(code, _env()) == "[]"


def test_an_endpoint_installs_the_sdk_and_exit_shuts_it_down() -> None:
    code = """
from opentelemetry import trace
from services import telemetry
with telemetry.tracing("indexer", telemetry.TelemetrySettings()):
    provider = telemetry.tracer_provider()
    assert provider is not None and trace.get_tracer_provider() is provider
    print(provider.resource.attributes["service.name"])
    assert len(telemetry.kafka_middlewares()) == 1
assert telemetry.tracer_provider() is None
"""
    env = _env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")  # nothing exported
    assert _run(code, env) == "artifact-search-indexer"
    env["OTEL_SERVICE_NAME"] = "indexer-eu"
    assert _run(code, env) == "indexer-eu"


def test_commands_that_are_not_deployables_are_never_traced() -> None:
    code = """
from services import telemetry
with telemetry.tracing("bootstrap"):
    print(telemetry.tracer_provider())
"""
    assert _run(code, _env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")) == "None"


def test_the_traces_endpoint_follows_the_otlp_rules() -> None:
    assert TelemetrySettings().traces_endpoint is None
    base = TelemetrySettings(exporter_otlp_endpoint="http://collector:4318/")
    assert base.traces_endpoint == "http://collector:4318/v1/traces"
    both = TelemetrySettings(
        exporter_otlp_endpoint="http://collector:4318",
        exporter_otlp_traces_endpoint="https://traces.example/otlp",
    )
    assert both.traces_endpoint == "https://traces.example/otlp"
    off = TelemetrySettings(exporter_otlp_endpoint="http://collector:4318", sdk_disabled=True)
    assert off.traces_endpoint is None


def _log_line(logger: logging.Logger, message: str) -> dict[str, Any]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info(message)
    finally:
        logger.removeHandler(handler)
    parsed: dict[str, Any] = json.loads(stream.getvalue())
    return parsed


def test_log_lines_carry_the_context_ids_and_the_current_span() -> None:
    logger = logging.getLogger("test.telemetry.fields")
    plain = _log_line(logger, "outside")
    assert "batch_id" not in plain and "trace_id" not in plain
    context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    with (
        log_fields(batch_id="b1"),
        log_fields(request_id="r1"),
        trace.use_span(NonRecordingSpan(context)),
    ):
        line = _log_line(logger, "inside")
    assert line["batch_id"] == "b1" and line["request_id"] == "r1"
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == "b7ad6b7169203331"
    assert "batch_id" not in _log_line(logger, "after")


def test_request_ids_are_taken_only_when_plausible() -> None:
    assert request_id_of("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "a b", "x" * 129, 'evil"\n{"level":"ERROR"}'):
        made = request_id_of(bad)
        assert made != bad and len(made) == 32


async def test_the_request_id_is_echoed_and_in_every_line_of_the_request() -> None:
    async def route(request: Request) -> PlainTextResponse:
        logging.getLogger("test.telemetry.route").warning("handling")
        return PlainTextResponse("ok", headers={"X-Request-ID": "spoofed-by-the-route"})

    app = Starlette(routes=[Route("/api/things", route, methods=["GET"])])
    app.add_middleware(RequestIdMiddleware)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("test.telemetry.route"), logging.getLogger("query.access")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            given = await http.get("/api/things?secret=1", headers={"X-Request-ID": "req-42"})
            made = await http.get("/api/things")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert given.headers.get_list("x-request-id") == ["req-42"]
    generated = made.headers["x-request-id"]
    assert len(generated) == 32
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["request_id"]) for line in lines] == [
        ("test.telemetry.route", "req-42"),
        ("query.access", "req-42"),
        ("test.telemetry.route", generated),
        ("query.access", generated),
    ]
    access = lines[1]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/api/things", 200)
    assert "secret" not in stream.getvalue()


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes | None]]


def test_a_batch_span_names_its_partitions_offsets_and_producers() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    records = [
        _Record("p.artifacts", 1, 7, [("traceparent", parent.encode())]),
        _Record("p.artifacts", 1, 9, [("traceparent", parent.encode()), ("x", None)]),
        _Record("p.artifacts", 0, 3, [("traceparent", b"garbage")]),
        _Record("p.members", 2, 5, []),
    ]
    attributes = batch_attributes(records, "group")
    assert attributes["messaging.batch.message_count"] == 4
    assert attributes["indexer.partitions"] == ["p.artifacts:0", "p.artifacts:1", "p.members:2"]
    assert attributes["indexer.offsets"] == [
        "p.artifacts:0:3-3",
        "p.artifacts:1:7-9",
        "p.members:2:5-5",
    ]
    links = producer_links(records)
    assert [(ln.context.trace_id, ln.context.span_id) for ln in links] == [
        (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    ]

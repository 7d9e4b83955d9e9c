"""Traces and correlation ids end to end: the real API and indexer processes export their
spans over OTLP/HTTP to a receiver in this test process.

The receiver is a plain HTTP server on 127.0.0.1 that decodes each `POST /v1/traces` body
with opentelemetry-proto's `ExportTraceServiceRequest`. The processes are started the way
an operator starts them (`python -m artifact_search.cli api|indexer`, only the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` set); contract events go through the real Kafka, with a W3C
`traceparent` header as a traced producer would send, and a query goes over HTTP. Then:

- the HTTP request is a server span of `artifact-search-api`, and an Elasticsearch client
  span is its descendant in the same trace;
- a batch of the group subscriber is an `indexer batch` span under FastStream's consumer
  span, linked to the producer's span, with a `bulk` Elasticsearch span as its child;
- the request id sent as `X-Request-ID` is echoed and is in the API's access log line,
  with the server span's trace id; a line logged inside a batch has its `batch_id`.

The processes' span processors export only when 512 spans are queued or at exit, and the
checks run after both were SIGTERMed: what they find arrived, at least in part, through
the flush on exit. Waits are bounded waits on conditions (ready, documents searchable).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from datagen.events import dataset_events
from services.config import KafkaSettings
from tests.ops.cleanup import drop_test_names
from tests.waiting import start_cli, terminate

ENV_PREFIXES = ("KAFKA_", "ELASTICSEARCH_", "INDEXER_", "QUERY_", "ALERTS_", "SYNC_", "LOG_")
ENV_PREFIXES += ("OTEL_",)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class Span:
    """One received span, ids in hex."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]


@dataclass
class Receiver:
    """What the OTLP/HTTP receiver got, shared with its handler thread."""

    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    got.append(
                        Span(
                            service=str(resource.get("service.name")),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            links=tuple((ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links),
                        )
                    )
        with self.lock:
            self.spans.extend(got)

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, Receiver]]:
    """An OTLP/HTTP traces receiver on a free 127.0.0.1 port: (endpoint, what it got)."""
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            received.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait(what: str, check: Callable[[], Any], seconds: float = 120) -> Any:
    """Poll `check` (sync or async) until it returns something truthy, at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                lines.append(item)
    return lines


def _descends(span: Span, ancestor: Span, by_id: dict[str, Span]) -> bool:
    while span.parent_id:
        if span.parent_id == ancestor.span_id:
            return True
        parent = by_id.get(span.parent_id)
        if parent is None:
            return False
        span = parent
    return False


@pytest.fixture
async def traced(
    kafka_bootstrap: str, elasticsearch_url: str, unique_name: str, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """The API and the indexer as processes, exporting to a receiver in this process."""
    with otlp_receiver() as (endpoint, received):
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
        ports = {"api": _free_port(), "indexer": _free_port()}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
            KAFKA_TOPIC_PREFIX=f"{unique_name}.",
            KAFKA_GROUP_ID=unique_name,
            KAFKA_PARTITIONS="1",
            ELASTICSEARCH_URL=elasticsearch_url,
            ELASTICSEARCH_INDEX_PREFIX=f"{unique_name}-",
            QUERY_PORT=str(ports["api"]),
            INDEXER_METRICS_HOST="127.0.0.1",
            INDEXER_METRICS_PORT=str(ports["indexer"]),
            INDEXER_STATE_DIR=str(tmp_path / "indexer-state"),
            LOG_LEVEL="INFO",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            # export only when 512 spans are queued or at exit: the spans checked below
            # arrive through the flush a SIGTERM makes
            OTEL_BSP_SCHEDULE_DELAY="3600000",
        )
        logs = {name: tmp_path / f"{name}.log" for name in ("bootstrap", "api", "indexer")}
        procs: list[asyncio.subprocess.Process] = []

        async def stop() -> None:
            """SIGTERM the processes and wait until they exited."""
            await terminate(procs)

        try:
            boot = await start_cli(env, logs["bootstrap"], "bootstrap")
            assert await asyncio.wait_for(boot.wait(), 120) == 0, logs["bootstrap"].read_text()
            api = await start_cli(env, logs["api"], "api")
            indexer = await start_cli(env, logs["indexer"], "indexer")
            procs = [api, indexer]
            async with httpx.AsyncClient(timeout=10) as http:
                for name, url in (
                    ("api", f"http://127.0.0.1:{ports['api']}/api/ready"),
                    ("indexer", f"http://127.0.0.1:{ports['indexer']}/readyz"),
                ):

                    async def ready(url: str = url, name: str = name) -> bool:
                        proc = api if name == "api" else indexer
                        assert proc.returncode is None, logs[name].read_text()[-3000:]
                        with contextlib.suppress(httpx.TransportError):
                            return (await http.get(url)).status_code == 200
                        return False

                    await _wait(f"{name} ready", ready)
            yield {
                "api_url": f"http://127.0.0.1:{ports['api']}",
                "kafka": KafkaSettings(
                    bootstrap_servers=kafka_bootstrap, topic_prefix=f"{unique_name}."
                ),
                "received": received,
                "logs": logs,
                "stop": stop,
            }
        finally:
            await stop()
            await drop_test_names(kafka_bootstrap, elasticsearch_url, unique_name)


async def test_http_and_kafka_batches_are_traced_and_logs_carry_their_ids(
    traced: dict[str, Any],
) -> None:
    kafka: KafkaSettings = traced["kafka"]
    received: Receiver = traced["received"]
    producer_trace, producer_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{producer_trace}-{producer_span}-01".encode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for entity, key, value in dataset_events(seed=3, artifacts=5):
            await producer.send(
                kafka.topic_for(entity),
                value=value,
                key=key,
                headers=[("traceparent", traceparent)],
            )
        await producer.flush()
    finally:
        await producer.stop()

    async with httpx.AsyncClient(base_url=traced["api_url"], timeout=10) as http:

        async def indexed() -> bool:
            resp = await http.post("/api/artifacts/count", json={})
            return resp.status_code == 200 and resp.json() > 0

        await _wait("artifacts searchable", indexed)
        request_id = f"test-{secrets.token_hex(6)}"
        resp = await http.post(
            "/api/artifacts/filter", json={"limit": 3}, headers={"X-Request-ID": request_id}
        )
        assert resp.status_code == 200 and resp.json()
        assert resp.headers["x-request-id"] == request_id
        generated = await http.post("/api/artifacts/count", json={})  # none given: one made
        assert len(generated.headers["x-request-id"]) == 32

    # the spans still queued are exported on SIGTERM: once both exited, everything is here
    await traced["stop"]()

    # the HTTP request: a server span with an Elasticsearch span below it, one trace
    def http_trace() -> tuple[Span, Span] | None:
        spans = received.snapshot()
        by_id = {s.span_id: s for s in spans}
        for server in spans:
            if (
                server.service == "artifact-search-api"
                and server.kind == ProtoSpan.SPAN_KIND_SERVER
                and server.attributes.get("http.route") == "/api/artifacts/filter"
            ):
                for es in spans:
                    if (
                        es.trace_id == server.trace_id
                        and es.attributes.get("db.system.name") == "elasticsearch"
                        and _descends(es, server, by_id)
                    ):
                        return server, es
        return None

    found = http_trace()
    assert found is not None, "no server span with an Elasticsearch span below it"
    server, es_span = found
    assert es_span.service == "artifact-search-api"

    # a group batch: FastStream's consumer span > indexer batch (linked to the producer) > bulk
    def batch_trace() -> tuple[Span, Span, Span] | None:
        spans = received.snapshot()
        by_id = {s.span_id: s for s in spans}
        for batch in spans:
            if batch.name != "indexer batch" or batch.attributes.get("indexer.source") != "group":
                continue
            consumer = by_id.get(batch.parent_id)
            bulk = next(
                (s for s in spans if s.parent_id == batch.span_id and s.name == "bulk"), None
            )
            if consumer is not None and bulk is not None:
                return consumer, batch, bulk
        return None

    found_batch = batch_trace()
    assert found_batch is not None, "no consumer span > indexer batch > bulk"
    consumer, batch, bulk = found_batch
    assert consumer.kind == ProtoSpan.SPAN_KIND_CONSUMER and consumer.name.endswith("process")
    assert batch.service == bulk.service == "artifact-search-indexer"
    assert bulk.trace_id == batch.trace_id == consumer.trace_id
    assert bulk.attributes.get("db.system.name") == "elasticsearch"
    assert (producer_trace, producer_span) in batch.links
    assert batch.attributes["messaging.batch.message_count"] >= 1
    assert all(
        p.startswith(f"{kafka.topic_prefix}prefect.")
        for p in batch.attributes["indexer.partitions"]
    )
    assert batch.attributes["indexer.offsets"]

    # logs: the request id (and the request's trace) in the API's access line; batch ids
    def access_line() -> dict[str, Any] | None:
        for line in _json_lines(traced["logs"]["api"]):
            if line.get("request_id") == request_id:
                return line
        return None

    line = access_line()
    assert line is not None, "no access line with the request id"
    assert line["logger"] == "query.access" and line["status"] == 200
    assert line["path"] == "/api/artifacts/filter"
    assert line["trace_id"] == server.trace_id

    # a line logged inside a batch (a partition's activation) names the batch and its trace
    def batch_line() -> dict[str, Any] | None:
        batches = {
            s.attributes["indexer.batch_id"]: s
            for s in received.snapshot()
            if s.name == "indexer batch"
        }
        for line in _json_lines(traced["logs"]["indexer"]):
            span = batches.get(line.get("batch_id", ""))
            if span is not None and line.get("trace_id") == span.trace_id:
                return line
        return None

    assert batch_line() is not None, "no indexer log line with its batch id and trace id"

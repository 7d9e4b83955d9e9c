"""OpenTelemetry tracing of the long-running commands, off unless an OTLP endpoint is set.

`tracing(role)` wraps a command (artifact_search/cli.py): when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names an OTLP/HTTP receiver (and `OTEL_SDK_DISABLED`
is not true), it installs the SDK's tracer provider as the global one — a resource whose
`service.name` is `artifact-search-<role>` unless `OTEL_SERVICE_NAME` says otherwise, a
`BatchSpanProcessor` and the OTLP/HTTP (protobuf) span exporter — and on exit shuts it
down, which exports the spans still queued. Without an endpoint nothing is installed: the
libraries' spans stay calls on OpenTelemetry's no-op API.

What then produces spans, each where it is wired (README, "Tracing"):

- the query API: a server span per HTTP request (opentelemetry-instrumentation-fastapi,
  `instrument_fastapi`), with elasticsearch-py's own client spans as children (the client
  traces itself through the global provider);
- the indexer: FastStream's `KafkaTelemetryMiddleware` on the group subscriber
  (`kafka_middlewares`) and a span per batch (indexer/tracing.py) whose children are the
  `_bulk` calls;
- the alerts worker and sync-prefect: their Elasticsearch calls (alerts) and nothing else
  yet.

The standard variables are read through `TelemetrySettings` (the exporter's other ones,
e.g. `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`, are read by the
SDK itself).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("services.telemetry")

SERVICE_NAMES = {
    "api": "artifact-search-api",
    "indexer": "artifact-search-indexer",
    "alerts": "artifact-search-alerts",
    "sync-prefect": "artifact-search-sync-prefect",
}
"""The `service.name` of each traced command (the deployables), by CLI subcommand."""

EXCLUDED_URLS = "api/health,api/ready,metrics"
"""Routes the API does not trace: probes and scrapes, many times a minute, tell nothing."""

_provider: TracerProvider | None = None


class TelemetrySettings(BaseSettings):
    """OpenTelemetry's standard variables this service reads (the `OTEL_` names)."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore")

    exporter_otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    exporter_otlp_traces_endpoint: str | None = Field(default=None, pattern=r"^https?://")
    service_name: str | None = None
    sdk_disabled: bool = False

    @property
    def traces_endpoint(self) -> str | None:
        """Where spans are POSTed: the traces endpoint as given, else `<endpoint>/v1/traces`
        (the OTLP/HTTP rule), else None (tracing off)."""
        if self.sdk_disabled:
            return None
        if self.exporter_otlp_traces_endpoint:
            return self.exporter_otlp_traces_endpoint
        if self.exporter_otlp_endpoint:
            return self.exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None


def setup_tracing(settings: TelemetrySettings, service_name: str) -> TracerProvider | None:
    """Install the SDK's tracer provider globally when an endpoint is configured (else
    nothing, and None). The SDK is imported only then."""
    global _provider
    endpoint = settings.traces_endpoint
    if endpoint is None:
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: settings.service_name or service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on: spans of %s go to %s", resource.attributes[SERVICE_NAME], endpoint)
    return provider


def shutdown_tracing() -> None:
    """Export the spans still queued and stop the exporter (no-op when tracing is off)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def flush_tracing(timeout_s: float = 10.0) -> None:
    """Export the spans still queued, now (no-op when tracing is off). For the end of an
    app's lifespan: uvicorn re-raises the SIGTERM it handled once the app has stopped, so
    the process dies before `tracing`'s exit could run."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def tracer_provider() -> TracerProvider | None:
    """The provider `setup_tracing` installed, or None when tracing is off."""
    return _provider


@contextlib.contextmanager
def tracing(command: str, settings: TelemetrySettings | None = None) -> Iterator[None]:
    """Trace the enclosed command when it is a deployable and an endpoint is configured;
    flush and shut down on the way out, however the command ends."""
    name = SERVICE_NAMES.get(command)
    if name is None:
        yield
        return
    setup_tracing(settings or TelemetrySettings(), name)
    try:
        yield
    finally:
        shutdown_tracing()


def instrument_fastapi(app: FastAPI) -> None:
    """A server span per HTTP request (probes and /metrics excluded); nothing when off."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider, excluded_urls=EXCLUDED_URLS)


def kafka_middlewares() -> tuple[Any, ...]:
    """FastStream's Kafka telemetry middleware for a broker, or none when tracing is off."""
    if _provider is None:
        return ()
    from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

    return (KafkaTelemetryMiddleware(tracer_provider=_provider),)

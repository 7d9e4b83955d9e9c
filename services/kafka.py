"""Connection arguments for aiokafka/FastStream from `KafkaSettings` (TLS, SASL)."""

from __future__ import annotations

import ssl
from typing import Any

from services.config import KafkaSettings


def _security(settings: KafkaSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        out["sasl_plain_username"] = settings.sasl_username
        out["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return out


def producer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for `aiokafka.AIOKafkaProducer` / consumers / admin clients."""
    return {"bootstrap_servers": settings.bootstrap_servers, **_security(settings)}


def broker_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for `faststream.kafka.KafkaBroker`."""
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    sec = _security(settings)
    if sec["security_protocol"] != "PLAINTEXT":
        kwargs.update({k: v for k, v in sec.items() if k != "security_protocol"})
        kwargs["security_protocol"] = sec["security_protocol"]
    return kwargs

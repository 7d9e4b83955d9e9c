"""The FastStream edge of the indexer: raw batch parsing and the AsyncAPI declarations.

FastStream decodes header values as UTF-8 to build its message; a null header value (which
aiokafka gives as None) or bytes that are not UTF-8 would make it drop the whole batch.
The parser hands it sanitized copies while the handler gets the untouched records, whose
original header bytes go to the dead letters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from indexer.outputs import MemberRecord
from services.config import KafkaSettings
from services.contract import EVENT_MODELS


def document_topics(broker: KafkaBroker, kafka: KafkaSettings) -> None:
    """Declare each topic's message schema for the AsyncAPI document (never published to)."""
    for topic, entity in kafka.entity_by_topic().items():
        broker.publisher(
            topic,
            title=f"{topic}:produce",
            description=(
                f"Lifecycle events of `{entity}` entities, keyed by the entity id "
                "(canonical lowercase UUID). A null value (tombstone) deletes the entity."
            ),
            schema=EVENT_MODELS[entity],
        )
    broker.publisher(
        kafka.dlq_topic,
        title=f"{kafka.dlq_topic}:dead-letters",
        description=(
            "Records the indexer could not apply: original key and value bytes, with "
            "headers dlq.reason, dlq.detail, dlq.topic, dlq.partition, dlq.offset."
        ),
        schema=bytes,
    )
    broker.publisher(
        kafka.members_topic,
        title=f"{kafka.members_topic}:internal",
        description=(
            "Internal to the indexer (do not produce): each artifact change repartitioned "
            "by the artifact's key, so one replica owns each collection. Compacted; keyed "
            "by `<collection id>:<artifact id>`; value "
            '`{"k": key, "a": artifact id, "o": source offset, "l": live, "p": fields}`.'
        ),
        schema=MemberRecord,
    )


def specification(kafka: KafkaSettings) -> AsyncAPI:
    """The AsyncAPI description of the topics this service consumes and produces."""
    return AsyncAPI(
        title="Prefect artifact search: lifecycle events v1",
        version="1.0.0",
        description=(
            "Producers publish flow, deployment, flow-run, task-run and artifact lifecycle "
            "events; the indexer consumes them. See docs/contract.md."
        ),
    )


def _safe_header(value: bytes | None) -> bytes:
    """A header value FastStream can decode as UTF-8: null becomes empty, bad bytes replaced."""
    if value is None:
        return b""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace").encode()
    return value


async def raw_parser(msg: Any, original: Any) -> Any:
    """Build the batch message from sanitized header copies (null or non-UTF-8 header values
    must never make FastStream drop a batch); the handler still gets the untouched records,
    whose original header bytes go to the dead letters."""
    safe = []
    for rec in msg:
        headers = rec.headers or ()
        if any(v is None or _safe_header(v) is not v for _, v in headers):
            rec = dataclasses.replace(rec, headers=[(k, _safe_header(v)) for k, v in headers])
        safe.append(rec)
    message = await original(tuple(safe))
    message.raw_message = tuple(msg)
    return message


async def raw_decoder(msg: Any, original: Any) -> Any:
    """Skip FastStream's body decoding: the handler parses raw bytes itself."""
    return None

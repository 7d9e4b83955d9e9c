"""A failing dead-letter publish must never let the indexer commit past the poison record.

Contract rule 7: a record that cannot be applied is published to the dead-letter topic and
skipped. The fault here is the dead-letter publish itself failing. It is reproduced
deterministically with a record the source topic accepts (its ``max.message.bytes`` raised
to 5 MB, as deployments with large payloads do) that is larger than the indexer's event
limit (``INDEXER_MAX_EVENT_BYTES``, 1 MB), so it is poison (``oversized``), and larger than
the dead-letter producer's ``max_request_size`` (aiokafka's 1 MiB default), so its
publish raises ``MessageSizeTooLargeError``.

Expected: the record reaches the dead-letter topic (its value may be truncated; its
source topic, partition and offset must be there) and the valid records around it are
indexed. Observed (see docs/reliability/FAULTS.md): the exception escapes the
batch handler, FastStream logs and swallows it, and the next batch's commit moves the
partition past the record: it is neither indexed nor dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from services.contract import encode_event
from tests.faults.harness import PrivateServers, open_scenario, record_figures

pytestmark = pytest.mark.timeout(600)


def artifact(art_id: str, description: str = "") -> dict[str, object]:
    return {
        "id": art_id,
        "created": "2024-01-01T00:00:00Z",
        "updated": "2024-01-01T00:00:00Z",
        "key": "dlq-fault",
        "type": "markdown",
        "description": description,
    }


async def test_failed_dead_letter_publish_never_skips_the_record(
    private_servers: PrivateServers,
) -> None:
    async with open_scenario(
        private_servers, "dlqfail", topic_configs={"max.message.bytes": "5000000"}
    ) as sc:
        topic = sc.topics.kafka.topic_for("artifact")
        big_id, good1, good2 = (str(uuid.uuid4()) for _ in range(3))
        producer = AIOKafkaProducer(
            bootstrap_servers=sc.wiring.kafka_bootstrap, acks="all", max_request_size=6_000_000
        )
        await producer.start()
        try:
            big = await producer.send_and_wait(
                topic,
                key=big_id.encode(),
                value=encode_event(
                    "artifact", big_id, "upsert", 1, artifact(big_id, "x" * 2_000_000)
                ),
                partition=0,
            )
            await producer.send_and_wait(
                topic,
                key=good1.encode(),
                value=encode_event("artifact", good1, "upsert", 1, artifact(good1)),
                partition=0,
            )
            proc = sc.start_indexer("a")
            count = 0
            deadline = time.monotonic() + 60
            while count < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                count = (await sc.client.post("/api/artifacts/count", json={})).json()
            # a later record on the same partition: its batch's commit covers everything before
            await producer.send_and_wait(
                topic,
                key=good2.encode(),
                value=encode_event("artifact", good2, "upsert", 1, artifact(good2)),
                partition=0,
            )
        finally:
            await producer.stop()
        lag = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lag, _, _ = await sc.topics.lag()
            if lag == 0:
                break
            await asyncio.sleep(0.5)
        dead = await sc.topics.dead_letters()
        for _ in range(20):  # applied is not yet visible: within the 1 s refresh interval
            count = (await sc.client.post("/api/artifacts/count", json={})).json()
            if count == 2:
                break
            await asyncio.sleep(0.5)
        log = proc.log_text()
        record_figures(
            "dead-letter-publish-fails",
            {
                "events_produced": 3,
                "indexed_artifacts": count,
                "lag_after_60s": lag,
                "dead_lettered": len(dead),
                "dead_letter_truncated_from": [h.get("dlq.truncated") for h in dead],
                "handler_errors_logged": log.count("MessageSizeTooLargeError"),
            },
        )
    coordinates = {(h.get("dlq.topic"), h.get("dlq.partition"), h.get("dlq.offset")) for h in dead}
    assert lag == 0, f"the indexer stalled: lag {lag} after 60 s"
    assert (topic, "0", str(big.offset)) in coordinates, (
        f"the oversized record at {topic}/0@{big.offset} was committed past without being "
        f"dead-lettered (lag {lag}, dead letters {dead}, handler errors in the log: "
        f"{log.count('MessageSizeTooLargeError')})"
    )
    reasons = [h.get("dlq.reason") for h in dead]
    assert reasons == ["oversized"], reasons
    assert count == 2, f"{count} of the 2 valid artifacts indexed"

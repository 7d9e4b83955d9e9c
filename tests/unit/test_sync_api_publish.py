"""The API mode's publishing step with a fake producer (no Kafka, no Prefect): the
checkpoint is written only after Kafka's acknowledgements, so a failed send is sent
again, with the same event id, and an unchanged snapshot is never sent twice."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
import pytest

from services.config import KafkaSettings
from services.sync.api_bridge import ApiSyncOptions
from services.sync.api_plan import Ref
from services.sync.api_session import ApiSession, Shared
from services.sync.api_state import ApiSyncStore

ID = "b92ea4c3-8f22-43c3-bc6c-639849a975d3"
URL = "http://prefect.test/api"


class KafkaDownError(Exception):
    """What the fake producer's acknowledgement fails with."""


class FakeProducer:
    """Records what was sent; acknowledges, or fails every acknowledgement."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.failing = False

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failing:
            future.set_exception(KafkaDownError("not acknowledged"))
        else:
            self.sent.append((topic, key, value))
            future.set_result(None)
        return future


def artifact(data: str, updated: str = "2026-11-30T21:00:00Z") -> dict[str, Any]:
    return {"id": ID, "created": "2026-11-30T20:00:00Z", "updated": updated, "data": data}


def session(producer: FakeProducer) -> tuple[ApiSession, ApiSyncStore]:
    store = ApiSyncStore(None, URL)
    shared = Shared(ApiSyncOptions(api_url=URL, state_path=None), on_ready=lambda _: None)
    kafka = KafkaSettings(bootstrap_servers="unused:9092", topic_prefix="t.")
    return ApiSession(shared, kafka, cast(Any, None), store, cast(Any, producer)), store


async def test_acknowledged_events_are_recorded_and_not_sent_again() -> None:
    producer = FakeProducer()
    publisher, store = session(producer)
    ref = Ref("artifact", ID)
    assert await publisher.publish([(ref, artifact("# a"), "read")], "event") == 1
    topic, key, value = producer.sent[0]
    assert (topic, key) == ("t.prefect.artifacts", ID.encode())
    assert orjson.loads(value)["data"]["data"] == "# a"
    assert store.live_ids("artifact") == {ID}
    # the same snapshot again (another event, a reconcile page): nothing to send
    assert await publisher.publish([(ref, artifact("# a"), "listing")], "reconcile") == 0
    assert len(producer.sent) == 1 and publisher.shared.published == 1
    # gone from Prefect: a delete, recorded
    assert await publisher.publish([(ref, None, "read")], "reconcile") == 1
    assert orjson.loads(producer.sent[-1][2])["op"] == "delete"
    assert store.live_ids("artifact") == set()


async def test_an_unacknowledged_event_is_not_recorded_and_is_sent_again_identically() -> None:
    producer = FakeProducer()
    publisher, store = session(producer)
    ref = Ref("artifact", ID)
    producer.failing = True
    with pytest.raises(KafkaDownError):
        await publisher.publish([(ref, artifact("# a"), "read")], "event")
    assert store.get([ref]) == {} and publisher.shared.published == 0
    producer.failing = False
    assert await publisher.publish([(ref, artifact("# a"), "read")], "event") == 1
    envelope = orjson.loads(producer.sent[0][2])
    # the id is derived from (entity, id, version): a re-send after a crash is the same event
    assert envelope["version"] == store.get([ref])[ref].version
    again, _ = session(FakeProducer())
    await again.publish([(ref, artifact("# a"), "read")], "event")
    resent = orjson.loads(cast(FakeProducer, again.producer).sent[0][2])
    assert resent["event_id"] == envelope["event_id"]

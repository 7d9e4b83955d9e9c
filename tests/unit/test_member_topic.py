"""The member topic's partition count: never 0 while a just-created topic's metadata spreads."""

from __future__ import annotations

from typing import Any

import pytest

from indexer.outputs import ensure_member_topic
from services.config import KafkaSettings
from services.errors import TransientError


class FakeAdmin:
    """describe_topics/create_topics as aiokafka's admin answers them; a created topic is
    described without partitions `blind` times first (metadata not yet on that broker)."""

    def __init__(self, topics: dict[str, int], blind: int = 0) -> None:
        self.topics = dict(topics)
        self.blind = blind
        self.created: list[tuple[str, int]] = []

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        out = []
        for name in names:
            if name not in self.topics:
                out.append({"topic": name, "error_code": 3, "partitions": []})
            elif name in dict(self.created) and self.blind > 0:
                self.blind -= 1
                out.append({"topic": name, "error_code": 0, "partitions": []})
            else:
                parts = [{"partition": p} for p in range(self.topics[name])]
                out.append({"topic": name, "error_code": 0, "partitions": parts})
        return out

    async def create_topics(self, topics: list[Any]) -> None:
        for topic in topics:
            self.topics[topic.name] = topic.num_partitions
            self.created.append((topic.name, topic.num_partitions))


async def test_a_created_topic_described_without_partitions_is_read_again() -> None:
    admin = FakeAdmin({"artifact": 6}, blind=3)
    count = await ensure_member_topic(admin, "artifact", "members", KafkaSettings())
    assert count == 6 and admin.created == [("members", 6)] and admin.blind == 0


async def test_an_existing_topic_is_not_created_again() -> None:
    admin = FakeAdmin({"artifact": 6, "members": 4})
    assert await ensure_member_topic(admin, "artifact", "members", KafkaSettings()) == 4
    assert admin.created == []


async def test_a_topic_that_never_gets_partitions_is_a_clear_transient_error() -> None:
    admin = FakeAdmin({"artifact": 2}, blind=10**6)
    with pytest.raises(TransientError, match="no partitions"):
        await ensure_member_topic(admin, "artifact", "members", KafkaSettings(), wait_s=0.3)

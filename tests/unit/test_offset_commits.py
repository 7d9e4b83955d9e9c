"""Monitoring offset commits (`services.kafka.OffsetCommits`) over a fake consumer: one
commit in flight per consumer, later positions merged into the next commit, nothing lost."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from services.kafka import OffsetCommits

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


async def settle() -> None:
    """Let every task that can run do so (a commit goes through `asyncio.wait_for`)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Consumer:
    """`commit` blocks until released; records what each call carried."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.calls: list[dict[TopicPartition, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.fail_first = False

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, positions: dict[TopicPartition, int]) -> None:
        self.calls.append(dict(positions))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
            if self.fail_first and len(self.calls) == 1:
                raise KafkaError("broker gone")
        finally:
            self.in_flight -= 1


async def test_steps_committed_while_a_commit_is_in_flight_are_merged_into_one() -> None:
    consumer = Consumer({A0, A1, B0})
    commits = OffsetCommits()
    commits.add(consumer, {A0: 10})
    await settle()  # the first commit is sent and waits
    commits.add(consumer, {A0: 20, A1: 5})
    commits.add(consumer, {A0: 30, B0: 7})
    commits.add(consumer, {})  # a step that moved nothing
    consumer.release.set()
    await commits.wait()
    assert consumer.calls == [{A0: 10}, {A0: 30, A1: 5, B0: 7}]
    assert consumer.most_in_flight == 1


async def test_a_lone_step_is_committed_at_once_and_a_later_one_after_it() -> None:
    consumer = Consumer({A0})
    consumer.release.set()
    commits = OffsetCommits()
    commits.add(consumer, {A0: 1})
    await commits.wait()
    commits.add(consumer, {A0: 2})
    await commits.wait()
    assert consumer.calls == [{A0: 1}, {A0: 2}]


async def test_partitions_revoked_meanwhile_are_left_out_and_consumers_are_independent() -> None:
    first, second = Consumer({A0, A1}), Consumer({B0})
    commits = OffsetCommits()
    commits.add(first, {A0: 3})
    commits.add(second, {B0: 4})
    await settle()
    assert first.in_flight == 1 and second.in_flight == 1  # neither waits for the other
    commits.add(first, {A0: 6, A1: 2})
    first.assigned = {A0}  # A1 revoked before the merged commit is sent
    first.release.set()
    second.release.set()
    await commits.wait()
    assert first.calls == [{A0: 3}, {A0: 6}]
    assert second.calls == [{B0: 4}]


async def test_a_failed_commit_is_logged_and_the_next_positions_still_go_out() -> None:
    consumer = Consumer({A0})
    consumer.fail_first = True
    commits = OffsetCommits()
    commits.add(consumer, {A0: 1})
    await settle()
    commits.add(consumer, {A0: 9})
    consumer.release.set()
    await commits.wait()
    assert consumer.calls == [{A0: 1}, {A0: 9}]

"""The one follower of whole topics: caught-up is told once per topic, records arrive in order from
the start and then as they come, a cluster that does not answer is a problem, not a crash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from streams.follower import TopicFollower


async def eventually(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Wait (without blocking the event loop) until ``predicate`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Positions:
    """Stands in for the consumer's ``position``."""

    def __init__(self, at: dict[TopicPartition, int]) -> None:
        self.at = at

    async def position(self, tp: TopicPartition) -> int:
        return self.at[tp]


def test_each_topic_is_told_once_when_every_partition_reached_its_start_time_end() -> None:
    told: list[str] = []
    follower = TopicFollower("127.0.0.1:1", ["a", "b"], lambda _: None, on_caught_up=told.append, security={})
    a0, a1, b0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
    behind = {a0: 5, a1: 0, b0: 2}
    consumer = Positions({a0: 3, a1: 0, b0: 2})
    asyncio.run(follower._still_behind(consumer, behind))
    assert told == ["b"] and not follower.caught_up.is_set()
    asyncio.run(follower._still_behind(consumer, behind))  # b is not told again
    assert told == ["b"] and behind == {a0: 5}
    consumer.at[a0] = 5
    asyncio.run(follower._still_behind(consumer, behind))
    assert told == ["b", "a"] and follower.caught_up.is_set()


def test_a_follower_needs_a_topic() -> None:
    with pytest.raises(ValueError, match="at least one topic"):
        TopicFollower("127.0.0.1:1", [], lambda _: None, security={})


async def _unreachable() -> TopicFollower:
    follower = TopicFollower("127.0.0.1:1", ["a"], lambda _: None, security={}, retry_s=0.1)
    async with follower.following():
        await eventually(lambda: follower.problem is not None, 30, "the follower to report the cluster")
    return follower


def test_a_cluster_that_does_not_answer_is_reported_and_stopping_still_works() -> None:
    started = time.monotonic()
    follower = asyncio.run(_unreachable())
    assert follower.problem is not None and follower.problem.startswith(
        "reading a failed: KafkaConnectionError"
    )
    assert not follower.caught_up.is_set()
    assert time.monotonic() - started < 30


async def _follow_a_topic(bootstrap: str, topic: str) -> dict[str, Any]:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(5):
        producer.send(topic, value=f"old-{i}".encode(), partition=i % 2)
    producer.flush()
    applied: list[tuple[int, bytes]] = []
    told: list[str] = []
    polls = 0

    async def after_poll() -> None:
        nonlocal polls
        polls += 1

    def apply(records: list[Any]) -> None:
        applied.extend((r.partition, r.value) for r in records)

    follower = TopicFollower(bootstrap, [topic], apply, on_caught_up=told.append, after_poll=after_poll)
    async with follower.following():
        await asyncio.wait_for(follower.caught_up.wait(), 30)
        at_catch_up = list(applied)
        producer.send(topic, value=b"new", partition=1)
        producer.flush()
        await eventually(lambda: (1, b"new") in applied, 30, "the record sent after catch-up")
    producer.close()
    return {"at_catch_up": at_catch_up, "applied": applied, "told": told, "polls": polls}


@pytest.mark.kafka
def test_a_topic_is_read_from_its_start_then_followed(kafka, topic_prefix: str) -> None:
    from streams.topics import ensure_topics, topic_name

    ensure_topics(kafka.bootstrap, partitions=2)
    topic = topic_name("forecasts")  # any topic of two partitions
    out = asyncio.run(_follow_a_topic(kafka.bootstrap, topic))
    assert sorted(out["at_catch_up"]) == sorted((i % 2, f"old-{i}".encode()) for i in range(5))
    by_partition = [[v for p, v in out["at_catch_up"] if p == part] for part in (0, 1)]
    assert by_partition == [[b"old-0", b"old-2", b"old-4"], [b"old-1", b"old-3"]]  # in offset order
    assert out["applied"][-1] == (1, b"new") and len(out["applied"]) == 6
    assert out["told"] == [topic] and out["polls"] >= 1

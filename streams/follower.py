"""Follow topics from their start, with no consumer group, for as long as a process runs.

Compacted topics that every process must read whole (tokens, status rows, model updates, forecasts)
are read the same way: every partition from offset 0, no group (so no process steals another's
partitions or commits offsets), each fetch handed to a callback, then on for every new record. A
follower knows when it has *caught up*: every partition read up to the end offset it had when the
follower connected, so a process can answer 503 until what it serves is complete. It reconnects
after a Kafka error (and reads from the start again: appliers keep the newest per key, so reading
twice is harmless), and its client is secured like every other (:mod:`streams.kafka_security`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from streams.kafka_security import client_security

log = logging.getLogger(__name__)

#: Records of one fetch, in offset order within each partition.
Apply = Callable[[list[ConsumerRecord[Any, Any]]], None]
#: How long one fetch waits for records; also how long :meth:`TopicFollower.run` takes to stop.
POLL_S = 0.5
RETRY_S = 1.0
#: How long the topics' partitions may take to show up (a topic nobody created never does).
ASSIGN_TIMEOUT_S = 30.0


class TopicFollower:
    """Reads ``topics`` from their start and keeps following them; see the module docstring.

    ``apply`` gets each fetch's records (in a thread with ``apply_in_thread``: a slow applier must
    not stall the event loop). ``on_caught_up(topic)`` is called once per topic, the first time all
    its partitions reach their end offsets; :attr:`caught_up` is set once every topic has.
    ``after_poll`` runs after every fetch, records or not. ``security`` defaults to the process's
    :func:`~streams.kafka_security.client_security`; ``consumer_options`` go to the consumer as is.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        apply: Apply,
        *,
        on_caught_up: Callable[[str], None] | None = None,
        after_poll: Callable[[], Awaitable[None]] | None = None,
        apply_in_thread: bool = False,
        security: Mapping[str, Any] | None = None,
        retry_s: float = RETRY_S,
        **consumer_options: Any,
    ) -> None:
        if not topics:
            raise ValueError("a follower needs at least one topic")
        self.bootstrap = bootstrap
        self.topics = sorted(set(topics))
        self.apply = apply
        self.on_caught_up = on_caught_up
        self.after_poll = after_poll
        self.apply_in_thread = apply_in_thread
        self.security = dict(client_security() if security is None else security)
        self.retry_s = retry_s
        self.consumer_options = consumer_options
        self.caught_up = asyncio.Event()
        #: Why the topics are not being read right now (None while they are).
        self.problem: str | None = None
        self._waiting = set(self.topics)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until ``stop`` is set, reconnecting after Kafka errors."""
        while not stop.is_set():
            try:
                await self._follow(stop)
            except (KafkaError, OSError, TimeoutError) as exc:
                self.problem = f"reading {', '.join(self.topics)} failed: {type(exc).__name__}: {exc}"
                log.warning("%s; retrying", self.problem)
                await stopped(stop, self.retry_s)

    @contextlib.asynccontextmanager
    async def following(self) -> AsyncIterator[None]:
        """Follow in a task of its own for the duration of the block."""
        stop = asyncio.Event()
        task = asyncio.create_task(self.run(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)

    async def _follow(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", **self.security, **self.consumer_options,
        )  # fmt: skip
        try:
            await consumer.start()
            behind = await self._assign(consumer, stop)
            self.problem = None
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=int(POLL_S * 1000))
                records = [record for records in batch.values() for record in records]
                if records and self.apply_in_thread:
                    await asyncio.to_thread(self.apply, records)
                elif records:
                    self.apply(records)
                if self._waiting:
                    await self._still_behind(consumer, behind)
                if self.after_poll is not None:
                    await self.after_poll()
        finally:
            await consumer.stop()

    async def _assign(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> dict[TopicPartition, int]:
        """Take every partition of the topics, from their start; return their end offsets.

        With no consumer group, subscribing assigns every partition of the topics to this consumer.
        """
        consumer.subscribe(topics=self.topics)
        deadline = time.monotonic() + ASSIGN_TIMEOUT_S
        while {tp.topic for tp in consumer.assignment()} != set(self.topics) and not stop.is_set():
            if time.monotonic() > deadline:
                raise KafkaError(f"no partitions of {', '.join(self.topics)} (run `driftline topics`)")
            await asyncio.sleep(0.05)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(consumer.assignment()))
        return ends

    async def _still_behind(self, consumer: Any, behind: dict[TopicPartition, int]) -> None:
        """Drop partitions read up to their end offset; tell each topic once all of its are.

        ``consumer`` needs only ``position`` (an :class:`AIOKafkaConsumer`).
        """
        for tp, end in list(behind.items()):
            if await consumer.position(tp) >= end:
                del behind[tp]
        for topic in self._waiting - {tp.topic for tp in behind}:
            self._waiting.discard(topic)
            if self.on_caught_up is not None:
                self.on_caught_up(topic)
        if not self._waiting:
            self.caught_up.set()


async def stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; True once ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()

"""Sends outputs to Kafka and returns only once the broker has them, retrying while it cannot.

An idempotent aiokafka producer with ``acks=all``. A send that fails (broker down, leader moving)
is retried with a growing pause until it succeeds, and the runner waits for it: the batch's
offsets are not advanced and nothing is checkpointed meanwhile, so an output is never lost after
a failed send and nothing is acknowledged past it. :attr:`problem` says why sends are failing,
for ``/health``.

A record refused for what it is (larger than the broker takes, malformed, an invalid topic) would
be refused forever: :class:`RecordRefused` is raised at once instead, and the runner dead-letters
that output rather than stall the stream behind it.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)

from streams.kafka_security import client_security

log = logging.getLogger(__name__)

MAX_PAUSE_S = 5.0

#: Refusals of the record itself (by the broker, or by the client before sending): the same bytes
#: can never succeed. Everything else (a broker down, a timeout, a leader moving) is retried.
REFUSALS: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    UnsupportedForMessageFormatError,
)


class RecordRefused(Exception):
    """The broker will never take this record; ``reason`` says why."""

    def __init__(self, topic: str, size: int, cause: KafkaError) -> None:
        self.topic = topic
        self.size = size
        self.reason = f"{type(cause).__name__}: {cause}"
        super().__init__(f"{topic} refused a record of {size:,} bytes: {self.reason}")


class KafkaSink:
    """The worker's one producer; see the module docstring."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None
        #: Why sends are failing right now, or None.
        self.problem: str | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaSink.start() was not awaited")
        return self._producer

    async def start(self) -> None:
        """Connect (inside the event loop that will send)."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_batch_size=512 * 1024,
            request_timeout_ms=15_000,
            **client_security(),
        )
        await self._producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Return once the broker holds the record; raise :class:`RecordRefused` if it never will."""
        pause = 0.2
        while True:
            try:
                await self.producer.send_and_wait(topic, value, key=key)
            except REFUSALS as exc:
                raise RecordRefused(topic, len(value), exc) from exc
            except (TimeoutError, KafkaError) as exc:
                self.problem = f"sending to {topic} failed, retrying: {type(exc).__name__}: {exc}"
                log.warning("%s", self.problem)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_S)
                continue
            self.problem = None
            return

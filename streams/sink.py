"""Sends outputs to Kafka and returns only once the broker has them, retrying while it cannot.

An idempotent aiokafka producer with ``acks=all``. A send that fails (broker down, leader moving)
is retried with a growing pause until it succeeds, and the runner waits for it: the batch's
offsets are not advanced and nothing is checkpointed meanwhile, so an output is never lost after
a failed send and nothing is acknowledged past it. :attr:`problem` says why sends are failing,
for ``/health``.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.kafka_security import client_security

log = logging.getLogger(__name__)

MAX_PAUSE_S = 5.0


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
        pause = 0.2
        while True:
            try:
                await self.producer.send_and_wait(topic, value, key=key)
            except (TimeoutError, KafkaError) as exc:
                self.problem = f"sending to {topic} failed, retrying: {type(exc).__name__}: {exc}"
                log.warning("%s", self.problem)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE_S)
                continue
            self.problem = None
            return

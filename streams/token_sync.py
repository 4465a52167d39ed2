"""Keeps every process's :class:`~streams.tokens.TokenStore` current, and the CLI's side of it.

A process follows the compacted ``tokens`` topic from its start with a
:class:`~streams.follower.TopicFollower` (every process reads every record, like serving replicas
follow ``model-updates``) and re-reads its home's
``tokens.jsonl`` when it changes. A record the file holds but the topic lacks (``tokens add`` ran
while no broker was up) is published once the topic has been read to its end, so workers with
other homes learn it too. The CLI publishes directly when a broker answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord

from streams.follower import TopicFollower, stopped
from streams.tokens import TokenFile, TokenRecord, TokenStore, parse_token_record
from streams.topics import topic_name

log = logging.getLogger(__name__)

POLL_S = 1.0
RETRY_S = 2.0


class TokenSync:
    """Feeds ``store`` from ``file`` and, with a ``bootstrap``, from the tokens topic; see the module."""

    def __init__(
        self,
        store: TokenStore,
        file: TokenFile | None,
        bootstrap: str | None,
        kafka_options: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.file = file
        self.bootstrap = bootstrap
        #: Client security (:func:`streams.kafka_security.client_security`) for the consumer and producer.
        self.kafka_options = kafka_options or {}
        #: Newest ``ts`` per name seen on (or sent to) the topic.
        self._on_topic: dict[str, float] = {}
        #: File records the topic may lack, published once the topic has been read to its end.
        self._pending: list[TokenRecord] = []
        self._producer: AIOKafkaProducer | None = None
        self.follower: TopicFollower | None = None
        if bootstrap:
            self.follower = TopicFollower(
                bootstrap, [topic_name("tokens")], self._apply_topic, after_poll=self._after_poll,
                security=self.kafka_options, retry_s=RETRY_S,
            )  # fmt: skip
        self.caught_up = self.follower.caught_up if self.follower is not None else asyncio.Event()

    def load_file(self) -> list[TokenRecord]:
        """Apply the file's records if it changed; return them (empty when unchanged)."""
        if self.file is None or not self.file.changed():
            return []
        records = self.file.read()
        for record in records:
            self.store.apply(record)
        return records

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: re-read the file every second and follow the topic, reconnecting on errors.

        The file is watched on its own, not after each fetch: while the broker is unreachable the
        follower only retries, and a token added to this home must still work here within a second.
        """
        in_file = self.load_file()
        if self.follower is None:
            self.caught_up.set()
            await self._watch_file(stop)
            return
        self._pending = in_file  # the whole file: what the topic may lack
        watching = asyncio.create_task(self._watch_file(stop))
        try:
            await self.follower.run(stop)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None

    async def _watch_file(self, stop: asyncio.Event) -> None:
        """Apply the file's changes every second; keep them for the topic when one is followed."""
        while not await stopped(stop, POLL_S):
            changed = self.load_file()
            if self.follower is not None:
                self._pending += changed

    def _apply_topic(self, messages: list[ConsumerRecord[Any, Any]]) -> None:
        for message in messages:
            record = parse_token_record(message.value) if message.value else None
            if record is None:
                continue
            self._on_topic[record.name] = max(record.ts, self._on_topic.get(record.name, record.ts))
            self.store.apply(record)

    async def _after_poll(self) -> None:
        """Once caught up, publish the file's records that the topic lacks."""
        if self.caught_up.is_set() and self._pending and self.bootstrap:
            self._producer = self._producer or await _started_producer(self.bootstrap, self.kafka_options)
            pending, self._pending = self._pending, []  # the file watcher may add more meanwhile
            try:
                await self._forward(self._producer, pending)
            except BaseException:
                self._pending = pending + self._pending  # sent again after the reconnect
                raise

    async def _forward(self, producer: AIOKafkaProducer, records: list[TokenRecord]) -> None:
        """Publish the file records the topic does not hold yet (newest per name only)."""
        newest: dict[str, TokenRecord] = {}
        for record in records:
            held = newest.get(record.name)
            if held is None or record.ts > held.ts:
                newest[record.name] = record
        for record in newest.values():
            if record.ts > self._on_topic.get(record.name, float("-inf")):
                key = record.name.encode()
                await producer.send_and_wait(topic_name("tokens"), record.to_bytes(), key=key)
                self._on_topic[record.name] = record.ts


async def _started_producer(bootstrap: str, options: dict[str, Any]) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000, **options)
    await producer.start()
    return producer


# -- the CLI's side: plain blocking clients ----------------------------------------------------------
def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when some bootstrap server accepts a TCP connection (so clients need not time out)."""
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def publish(bootstrap: str, record: TokenRecord, timeout_s: float = 10.0, **options: Any) -> None:
    """Send ``record`` to the tokens topic and wait for the broker (raises when none answers).

    ``options`` secure the client (:func:`streams.kafka_security.client_security`).
    """
    from kafka import KafkaProducer

    from streams.topics import ensure_topics

    ensure_topics(bootstrap, timeout_s=timeout_s)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=int(timeout_s * 1000),
        max_block_ms=int(timeout_s * 1000), **options,
    )  # fmt: skip
    try:
        producer.send(topic_name("tokens"), record.to_bytes(), key=record.name.encode()).get(timeout_s)
    finally:
        producer.close(timeout=timeout_s)


def read_topic(bootstrap: str, timeout_s: float = 10.0, **options: Any) -> list[TokenRecord]:
    """Every token record on the topic (raises when no broker answers); ``options`` as for :func:`publish`."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as SyncPartition

    tp = SyncPartition(topic_name("tokens"), 0)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000) + 1000, **options,
    )  # fmt: skip
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        found: list[TokenRecord] = []
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=int(timeout_s * 1000)).values():
                found += [r for m in messages if m.value and (r := parse_token_record(m.value))]
        return found
    finally:
        consumer.close()

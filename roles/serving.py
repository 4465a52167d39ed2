"""The serving role: replicas that answer queries and never train.

Each serving part names the topic it follows: CTR follows the compacted ``model-updates`` topic
(every version the trainer publishes), forecast follows ``forecasts`` (every series' latest
forecast). A replica reads those topics from their start without a consumer group (every replica
reads everything) and hands each record to the parts that follow its topic; a part checks it and
swaps it in by one reference assignment. HTTP latency then never competes with training: the
trainer runs in another process (``driftline worker``).

A part is caught up once the replica has read every record its topic held when the replica
started. Until then, and until it has something to serve, ``/ready`` and its query routes answer
503 with ``Retry-After``; ``/health`` stays a 200 liveness answer with a status field.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from roles.host import STATUS_INTERVAL_S, health_body, serving_http
from streams.config import Settings
from streams.http import make_app
from streams.kafka_security import client_security
from streams.metrics import WorkerMetrics
from streams.schemas import Record, RecordError, ServiceStatus, parse_record
from streams.service import Route
from streams.sink import KafkaSink
from streams.status import collect_rows, publish_status
from streams.topics import topic_name

log = logging.getLogger(__name__)

RETRY_S = 1.0
ASSIGN_TIMEOUT_S = 30.0
#: How long the thread applying records may hold the GIL while a query waits for it (Python's
#: default is 5 ms, the whole /forecast p99 target). With a thread loading CTR versions flat out
#: beside it, the event loop's p99 gap fell from 13.8 to 9.8 ms on one loaded core (measured).
GIL_SWITCH_S = 0.001


class ServingPart(Protocol):
    """What a family gives a replica (e.g. :class:`models.ctr.serving.CtrServing`)."""

    name: str
    #: The topic (logical name, e.g. ``"model-updates"``) this part is fed from, and its records' type.
    follows: str
    record_type: type[Record]

    def routes(self) -> list[Route]: ...

    def ready(self) -> bool: ...

    def model_version(self) -> int: ...

    def apply(self, record: Record) -> None:
        """Serve what ``record`` brings; raise to report a record that cannot be served."""

    def caught_up(self) -> None:
        """Called once: every record the topic held at the replica's start has been applied."""


class ServingRole:
    """One replica process; see the module docstring."""

    role = "serving"

    def __init__(self, settings: Settings, parts: list[ServingPart]) -> None:
        self.settings = settings
        self.parts = {part.name: part for part in parts}
        #: Topic (full name) -> the parts it feeds.
        self.followers: dict[str, list[ServingPart]] = {}
        for part in parts:
            self.followers.setdefault(topic_name(part.follows), []).append(part)
        self.metrics = WorkerMetrics()
        self.instance = settings.instance_id
        self.url = settings.url
        self.sink = KafkaSink(settings.bootstrap)
        self.started = time.time()
        self.problem: str | None = None
        self.records_applied = 0

    def health(self) -> dict[str, Any]:
        return health_body(
            self.role,
            self.instance,
            self.started,
            [self.problem] if self.problem else [],
            updates_applied=self.records_applied,
            services={
                name: {"model_version": part.model_version(), "ready": part.ready(), "partitions": []}
                for name, part in self.parts.items()
            },
        )

    def ready(self) -> tuple[bool, str]:
        waiting = [name for name, part in self.parts.items() if not part.ready()]
        if waiting:
            return False, f"catching up with the topics of {', '.join(waiting)}"
        return True, "every service is caught up and has something to serve"

    # -- following -------------------------------------------------------------------------------
    def _apply(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]) -> None:
        """Apply one fetch (in a thread: loading a model version takes a while)."""
        for tp, records in batch.items():
            for part in self.followers[tp.topic]:
                for record in records:
                    self._apply_one(part, record.value)

    def _apply_one(self, part: ServingPart, value: bytes | None) -> None:
        if value is None:
            return
        try:
            record = parse_record(value, part.record_type)
        except RecordError as exc:
            log.warning("%s: skipped a record of %s: %s", part.name, part.follows, exc)
            return
        try:
            part.apply(record)
        except Exception as exc:  # a bad record must not stop serving what is in hand
            self.problem = f"{part.name}: a {part.follows} record was not served: {type(exc).__name__}: {exc}"
            log.error("%s", self.problem)
            return
        self.problem = None
        self.records_applied += 1
        self.metrics.model_version.labels(part.name).set(part.model_version())

    async def _assign(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Take every partition of the followed topics, from their start; return their end offsets.

        With no consumer group, subscribing assigns every partition of the topics to this consumer.
        """
        topics = set(self.followers)
        consumer.subscribe(topics=sorted(topics))
        deadline = time.monotonic() + ASSIGN_TIMEOUT_S
        while {tp.topic for tp in consumer.assignment()} != topics:
            if time.monotonic() > deadline:
                raise KafkaError(f"no partitions of {', '.join(sorted(topics))} (run `driftline topics`)")
            await asyncio.sleep(0.05)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(consumer.assignment()))
        return ends

    async def _follow(self, stop: asyncio.Event) -> None:
        """Apply every record of the followed topics, from their start, as it arrives."""
        waiting = set(self.followers)
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest", fetch_max_bytes=64 * 1024**2, **client_security(self.settings),
            )  # fmt: skip
            try:
                await consumer.start()
                behind = await self._assign(consumer)
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=500)
                    if batch:
                        await asyncio.to_thread(self._apply, batch)
                    if waiting:
                        waiting = await self._still_behind(consumer, behind, waiting)
            except KafkaError as exc:  # read everything again: parts skip what they hold
                self.problem = f"reading {', '.join(self.followers)} failed: {exc}"
                log.warning("%s; retrying", self.problem)
                await asyncio.sleep(RETRY_S)
            finally:
                await consumer.stop()

    async def _still_behind(
        self, consumer: AIOKafkaConsumer, behind: dict[TopicPartition, int], waiting: set[str]
    ) -> set[str]:
        """Drop partitions read up to their start-time end; tell a topic's parts once all its are."""
        for tp, end in list(behind.items()):
            if await consumer.position(tp) >= end:
                del behind[tp]
        still = {tp.topic for tp in behind}
        for topic in waiting - still:
            for part in self.followers[topic]:
                part.caught_up()
        return waiting & still

    def status_rows(self) -> list[ServiceStatus]:
        return collect_rows(
            self.metrics.registry, instance=self.instance, role=self.role, url=self.url,
            partitions={name: [] for name in self.parts},
            ready={name: part.ready() for name, part in self.parts.items()},
            status="degraded" if self.problem else "ok",
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        sys.setswitchinterval(GIL_SWITCH_S)  # a replica's process is its own
        await self.sink.start()
        app = make_app(list(self.parts.values()), self.metrics.render, self.health, self.ready)
        try:
            async with serving_http(self.settings, app, f"serving replica {self.instance}"):
                status = publish_status(self.sink.producer, self.status_rows, stop, STATUS_INTERVAL_S)
                tasks = [asyncio.create_task(self._follow(stop)), asyncio.create_task(status)]
                try:
                    await stop.wait()
                finally:
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.sink.stop()

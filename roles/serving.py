"""The serving role: replicas that answer queries and never train.

Each serving part names the topic it follows: CTR follows the compacted ``model-updates`` topic
(every version the trainer publishes), forecast follows ``forecasts`` (every series' latest
forecast). A replica reads those topics from their start without a consumer group (every replica
reads everything) and hands each record to the parts that follow its topic; a part checks it and
swaps it in by one reference assignment. HTTP latency then never competes with training: the
trainer runs in another process (``driftline worker``).

A part is caught up once the replica has read every record its topic held when the replica
started (:class:`~streams.follower.TopicFollower`). Until then, and until it has something to
serve, ``/ready`` and its query routes answer 503 with ``Retry-After``; ``/health`` stays a 200
liveness answer with a status field.

A replica keeps no lineage: ``GET /models`` and ``POST /models/{service}/promote|rollback`` are
forwarded (:mod:`streams.forwarding`, the caller's token along) to the ready worker that runs the
service, which the status topic names (:class:`~streams.directory.OwnerDirectory`); while none is
known they answer 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, Protocol

from aiohttp import web
from aiokafka import ConsumerRecord

from roles.host import STATUS_INTERVAL_S, health_body, serving_http
from streams.config import Settings
from streams.directory import OwnerDirectory
from streams.follower import TopicFollower
from streams.forwarding import MODELS, forward, merged_lineage
from streams.heap import settle_heap
from streams.http import make_app, unavailable
from streams.kafka_security import client_security
from streams.metrics import WorkerMetrics
from streams.schemas import Record, RecordError, ServiceStatus, parse_record
from streams.service import Route
from streams.sink import KafkaSink
from streams.status import StatusBoard, collect_rows, publish_status
from streams.topics import topic_name

log = logging.getLogger(__name__)

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
        #: Why the last record was not served (None once one is).
        self.problem: str | None = None
        self.records_applied = 0
        security = client_security(settings)
        self.follower = TopicFollower(
            settings.bootstrap, list(self.followers), self._apply, on_caught_up=self._caught_up,
            apply_in_thread=True, security=security, fetch_max_bytes=64 * 1024**2,
        )  # fmt: skip
        #: The status topic's rows: this replica's dashboard, and where the workers are.
        self.board = StatusBoard(settings.bootstrap, security=security)
        self.directory = OwnerDirectory(self.board)

    def health(self) -> dict[str, Any]:
        return health_body(
            self.role,
            self.instance,
            self.started,
            [p for p in (self.follower.problem, self.problem) if p],
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
    def _apply(self, records: list[ConsumerRecord[Any, Any]]) -> None:
        """Apply one fetch (in a thread: loading a model version takes a while)."""
        for record in records:
            for part in self.followers[record.topic]:
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

    def _caught_up(self, topic: str) -> None:
        for part in self.followers[topic]:
            part.caught_up()

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
        settle_heap()  # imports and built parts: out of the collector's full passes
        await self.sink.start()
        app = make_app(list(self.parts.values()), self.metrics.render, self.health, self.ready)
        WorkersLineage(self.directory, list(self.parts)).attach(app)
        try:
            async with serving_http(self.settings, app, f"serving replica {self.instance}", self.board):
                status = publish_status(self.sink.producer, self.status_rows, stop, STATUS_INTERVAL_S)
                tasks = [asyncio.create_task(self.follower.run(stop)), asyncio.create_task(status)]
                try:
                    await stop.wait()
                finally:
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.sink.stop()


class WorkersLineage:
    """A replica's lineage routes, answered by the workers that train its services (see the module)."""

    def __init__(self, directory: OwnerDirectory, services: list[str]) -> None:
        self.directory = directory
        self.services = services

    def attach(self, app: web.Application) -> None:
        """Serve the routes from ``app`` (made by :func:`streams.http.make_app`, which forwards)."""
        app.router.add_get(MODELS, self.models)
        app.router.add_post(MODELS + "/{service}/{action}", self.act)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /models``: every service's lineage from the workers of this replica's services."""
        workers = self.directory.worker_urls(self.services)
        return await merged_lineage(request, workers) if workers else _no_worker(self.services)

    async def act(self, request: web.Request) -> web.Response:
        """``POST /models/{service}/promote|rollback``: done by the worker that trains the service."""
        service = request.match_info["service"]
        workers = self.directory.worker_urls([service])
        if not workers:
            return _no_worker([service])
        return await forward(request, workers[0], f"the worker of {service} at {workers[0]}")


def _no_worker(services: Iterable[str]) -> web.Response:
    return unavailable(f"no worker running {', '.join(services)} is known yet (the status topic names them)")

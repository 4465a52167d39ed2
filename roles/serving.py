"""The serving role: replicas that answer queries and never train.

A replica follows the compacted ``model-updates`` topic from its start (no consumer group: every
replica reads every version) and hands each update to its service's serving part, which checks it
and swaps it in by one reference assignment. HTTP latency then never competes with training: the
trainer runs in another process (``driftline worker``). Until a part holds its first version,
``/ready`` and its query routes answer 503 with ``Retry-After``; ``/health`` stays a 200 liveness
answer with a status field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from roles.worker import STATUS_INTERVAL_S
from streams.config import Settings
from streams.http import make_app
from streams.kafka_security import client_security
from streams.metrics import WorkerMetrics
from streams.schemas import ModelUpdate, RecordError, ServiceStatus, parse_record
from streams.service import Route
from streams.sink import KafkaSink
from streams.status import collect_rows, publish_status
from streams.topics import topic_name

log = logging.getLogger(__name__)


class ServingPart(Protocol):
    """What a family gives a replica (e.g. :class:`models.ctr.serving.CtrServing`)."""

    name: str

    def routes(self) -> list[Route]: ...

    def ready(self) -> bool: ...

    def model_version(self) -> int: ...

    def apply_update(self, update: ModelUpdate) -> None: ...


class ServingRole:
    """One replica process; see the module docstring."""

    role = "serving"

    def __init__(self, settings: Settings, parts: list[ServingPart]) -> None:
        self.settings = settings
        self.parts = {part.name: part for part in parts}
        self.metrics = WorkerMetrics()
        self.instance = settings.instance_id
        self.url = settings.url
        self.sink = KafkaSink(settings.bootstrap)
        self.started = time.time()
        self.problem: str | None = None
        self.updates_applied = 0

    def health(self) -> dict[str, Any]:
        return {
            "status": "degraded" if self.problem else "ok",
            "problems": [self.problem] if self.problem else [],
            "instance": self.instance,
            "role": self.role,
            "uptime_s": round(time.time() - self.started, 1),
            "updates_applied": self.updates_applied,
            "services": {
                name: {"model_version": part.model_version(), "ready": part.ready(), "partitions": []}
                for name, part in self.parts.items()
            },
        }

    def ready(self) -> tuple[bool, str]:
        waiting = [name for name, part in self.parts.items() if not part.ready()]
        if waiting:
            return False, f"waiting for the first model version of {', '.join(waiting)}"
        return True, "every service serves a model version"

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            update = parse_record(value, ModelUpdate)
            assert isinstance(update, ModelUpdate)
        except RecordError as exc:
            log.warning("skipped a model update: %s", exc)
            return
        part = self.parts.get(update.service)
        if part is None:
            return
        try:
            part.apply_update(update)
        except Exception as exc:  # a bad update must not stop serving the version in hand
            self.problem = f"{update.service} v{update.version} not loaded: {type(exc).__name__}: {exc}"
            log.error("%s", self.problem)
            return
        self.problem = None
        self.updates_applied += 1
        self.metrics.model_version.labels(update.service).set(part.model_version())

    async def _follow(self, stop: asyncio.Event) -> None:
        """Apply every model update, from the start of the compacted topic, as it arrives."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_bytes=64 * 1024**2, **client_security(self.settings),
        )  # fmt: skip
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic_name("model-updates"), 0)])
            while not stop.is_set():
                try:
                    batch = await consumer.getmany(timeout_ms=500)
                except KafkaError as exc:
                    self.problem = f"reading model updates failed: {exc}"
                    await asyncio.sleep(1.0)
                    continue
                for records in batch.values():
                    for record in records:
                        await asyncio.to_thread(self._apply, record.value)
        finally:
            await consumer.stop()

    def status_rows(self) -> list[ServiceStatus]:
        return collect_rows(
            self.metrics.registry, instance=self.instance, role=self.role, url=self.url,
            partitions={name: [] for name in self.parts},
            ready={name: part.ready() for name, part in self.parts.items()},
            status="degraded" if self.problem else "ok",
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        await self.sink.start()
        app = make_app(list(self.parts.values()), self.metrics.render, self.health, self.ready)
        http = web.AppRunner(app, access_log=None)
        await http.setup()
        await web.TCPSite(http, self.settings.http_host, self.settings.http_port).start()
        log.info("serving replica %s: HTTP on %s", self.instance, self.url)
        status = publish_status(self.sink.producer, self.status_rows, stop, STATUS_INTERVAL_S)
        tasks = [asyncio.create_task(self._follow(stop)), asyncio.create_task(status)]
        try:
            await stop.wait()
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)
            await http.cleanup()
            await self.sink.stop()

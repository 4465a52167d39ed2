"""The Faust worker: one agent per service subscription, micro-batches, HTTP beside them.

Events are consumed as raw bytes (so a malformed event reaches our validator and the dead-letter
topic instead of crashing Faust's decoder) in micro-batches with ``take_events``, which
acknowledges a batch only after the agent has finished with it; :class:`ServiceRunner` makes that
"finished" mean "outputs delivered and state checkpointed with offsets".
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust
from aiohttp import web
from faust.types import TP

from streams.config import Settings
from streams.http import make_app
from streams.metrics import WorkerMetrics
from streams.runner import Incoming, ServiceRunner
from streams.service import ModelService, Subscription

log = logging.getLogger(__name__)


class FaustSink:
    """Sends through the Faust app's producer and waits for the broker's acknowledgement."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        pending = await self.app.producer.send(
            topic, key, value, partition=None, timestamp=None, headers=None
        )
        await pending


def make_faust_app(settings: Settings) -> faust.App:
    """A Faust app on the configured cluster with settings fit for one small node."""
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=4,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=65536,
        stream_processing_timeout=300.0,
        broker_max_poll_interval=600.0,
    )


class Worker:
    """Wires services to a Faust app: restores them, adds their agents and the HTTP server."""

    def __init__(self, settings: Settings, services: list[ModelService]) -> None:
        self.settings = settings
        self.services = services
        self.metrics = WorkerMetrics()
        self.app = make_faust_app(settings)
        sink = FaustSink(self.app)
        self.runners = [
            ServiceRunner(s, Path(settings.home) / "checkpoints", sink, self.metrics) for s in services
        ]
        self.started = time.time()
        self._http: web.AppRunner | None = None
        for runner in self.runners:
            runner.restore()
            for subscription in runner.service.subscriptions():
                self._add_agent(runner, subscription)
        self.app.task(self._serve_http)
        self.app.timer(2.0)(self._refresh_lag)

    def _add_agent(self, runner: ServiceRunner, subscription: Subscription) -> None:
        topic = self.app.topic(
            subscription.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

        async def consume(stream: Any) -> None:
            async for events in stream.take_events(
                subscription.batch_size, within=subscription.batch_window_s
            ):
                batch = [
                    Incoming(
                        e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value
                    )
                    for e in events
                ]
                await runner.apply(subscription, batch)

        name = f"{runner.service.name}.{subscription.topic}"
        self.app.agent(topic, name=name)(consume)

    def _highwater(self, topic: str, partition: int) -> int | None:
        try:
            return int(self.app.consumer.highwater(TP(topic, partition)))
        except Exception:  # not assigned yet, or consumer restarting
            return None

    async def _refresh_lag(self) -> None:
        for runner in self.runners:
            for key, offset in runner.offsets.items():
                topic, partition = key.rsplit(":", 1)
                high = self._highwater(topic, int(partition))
                if high is not None:
                    self.metrics.lag.labels(topic, partition).set(max(high - offset - 1, 0))

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "bootstrap_servers": self.settings.bootstrap,
            "services": {
                r.service.name: {
                    "model_version": r.service.model_version(),
                    "partitions": len(r.offsets),
                    "restored_checkpoint": r.restored_version,
                }
                for r in self.runners
            },
        }

    async def _serve_http(self) -> None:
        app = make_app(self.services, self.metrics.render, self.health)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, self.settings.http_host, self.settings.http_port)
        await site.start()
        log.info("HTTP on http://%s:%d", self.settings.http_host, self.settings.http_port)
        try:
            await asyncio.Event().wait()
        finally:
            await self._http.cleanup()

    def run(self, loglevel: str = "warning") -> None:
        """Run until SIGINT/SIGTERM (blocks)."""
        worker = faust.Worker(self.app, loglevel=loglevel, quiet=True)
        # On shutdown Faust lists every buffered event while the last batch finishes; one line is enough.
        logging.getLogger("faust.transport.consumer").addFilter(lambda r: "wait_empty" not in r.getMessage())
        worker.spinner = None  # terminal escape codes are noise in logs
        worker.execute_from_commandline()

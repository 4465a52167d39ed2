"""The worker role: keyed workers and trainers, one process, several services.

Each service gets a :class:`~streams.runner.ServiceRunner` fed by its own
:class:`~streams.consumer.BatchConsumer` in the consumer group ``<app_id>.<service>``: keyed
services (tally) spread their partitions over every worker of the group; shared-model services
(forecast, ctr, rank: one trainer per model) run on one member while the others stand by. Beside
them: HTTP (``/health``, ``/ready``, ``/metrics`` and the services' routes, with requests for keys
owned elsewhere proxied to their owner), and a status row per service every 2 s on the compacted
status topic, which the worker also follows (one board for its dashboard and for learning who
owns which partition: :class:`~streams.directory.OwnerDirectory`).
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from roles.host import STATUS_INTERVAL_S, health_body, serving_http
from streams.config import Settings
from streams.consumer import BatchConsumer
from streams.directory import OwnerDirectory
from streams.heap import WORKER_YOUNG_ALLOCATIONS, settle_heap
from streams.http import make_app
from streams.kafka_security import client_security
from streams.lifecycle_routes import LifecycleRoutes
from streams.metrics import WorkerMetrics
from streams.runner import CheckpointPolicy, ServiceRunner
from streams.schemas import ServiceStatus
from streams.service import ModelService
from streams.sink import KafkaSink
from streams.status import StatusBoard, collect_rows, publish_status

log = logging.getLogger(__name__)


class WorkerRole:
    """Runs services from the stream with HTTP beside them until stopped; see the module docstring."""

    role = "worker"

    def __init__(
        self, settings: Settings, services: list[ModelService], policy: CheckpointPolicy | None = None
    ) -> None:
        self.settings = settings
        self.services = services
        self.metrics = WorkerMetrics()
        self.sink = KafkaSink(settings.bootstrap)
        self.instance = settings.instance_id
        self.url = settings.url
        policy = policy or CheckpointPolicy(settings.checkpoint_interval_s, settings.checkpoint_events)
        self.runners = [
            ServiceRunner(s, settings.checkpoint_root, self.sink, self.metrics, policy) for s in services
        ]
        self.consumers = [
            BatchConsumer(
                r,
                settings.bootstrap,
                f"{settings.app_id}.{r.service.name}",
                f"{self.instance}.{r.service.name}",
            )
            for r in self.runners
        ]
        #: The process's one reader of the status topic: the dashboard's rows and the owner directory.
        self.board = StatusBoard(settings.bootstrap, security=client_security(settings))
        self.directory = OwnerDirectory(self.board)
        self.started = time.time()

    # -- probes --------------------------------------------------------------------------------
    def partitions(self) -> dict[str, list[str]]:
        return {c.runner.service.name: sorted(f"{t}:{p}" for t, p in c.owned) for c in self.consumers}

    def problems(self) -> list[str]:
        found = [f"{r.service.name}: {r.problem}" for r in self.runners if r.problem]
        found += [f"{c.runner.service.name}: {c.problem}" for c in self.consumers if c.problem]
        if self.sink.problem:
            found.append(self.sink.problem)
        return found

    def health(self) -> dict[str, Any]:
        partitions = self.partitions()
        return health_body(
            self.role,
            self.instance,
            self.started,
            self.problems(),
            bootstrap_servers=self.settings.bootstrap,
            services={
                c.runner.service.name: {
                    "model_version": c.runner.service.model_version(),
                    "partitions": partitions[c.runner.service.name],
                    "ready": c.ready,
                    "replaying": c.backlog(),
                    "restored_checkpoint": c.runner.restored_version,
                    "applied_offsets": len(c.runner.offsets),
                }
                for c in self.consumers
            },
            drift={r.service.name: r.drift.view() for r in self.runners if r.drift is not None},
        )

    def ready(self) -> tuple[bool, str]:
        waiting = [c.runner.service.name for c in self.consumers if not c.ready]
        if waiting:
            return False, f"restoring partitions of {', '.join(waiting)}"
        return True, "every service owns and has restored its partitions"

    def _rows(self) -> list[ServiceStatus]:
        return collect_rows(
            self.metrics.registry,
            instance=self.instance,
            role=self.role,
            url=self.url,
            partitions=self.partitions(),
            ready={c.runner.service.name: c.ready for c in self.consumers},
            status="degraded" if self.problems() else "ok",
        )

    # -- running -------------------------------------------------------------------------------
    def status_rows(self) -> list[ServiceStatus]:
        self.metrics.render()  # refreshes the events/s gauges the rows read
        return self._rows()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then checkpoint every service and close."""
        settle_heap(WORKER_YOUNG_ALLOCATIONS)  # imports and built services: out of full GC passes
        await self.sink.start()
        services = [*self.services, LifecycleRoutes(self.services)]
        app = make_app(services, self.metrics.render, self.health, self.ready, self.directory.owner_url)
        try:
            async with serving_http(self.settings, app, f"{self.role} {self.instance}", self.board):
                tasks = [asyncio.create_task(c.run(stop)) for c in self.consumers]
                status = publish_status(self.sink.producer, self.status_rows, stop, STATUS_INTERVAL_S)
                tasks.append(asyncio.create_task(status))
                try:
                    done, _ = await asyncio.wait(
                        [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        if task in tasks and task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
                finally:
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self.sink.stop()


def run_until_signalled(
    role: WorkerRole, run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
) -> None:
    """Run ``role`` in a fresh event loop until SIGINT or SIGTERM (SIGUSR1 dumps every thread's stack).

    ``run`` runs the loop: asyncio's for workers, ``uvloop.run`` for serving replicas (see
    ``streams.cli``'s serve command). A replica's ``/forecast`` request cost half the server CPU on
    uvloop (0.27-0.35 against 0.56-0.66 ms, load 10-14); a ctr trainer drained Kafka no faster on
    it (median ratio to in process 0.68 against 0.72 on asyncio, 4 pairs at load 0.8-2.3), so
    workers keep asyncio's loop (docs/streams.md).
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Training threads hold the GIL for long stretches; a short switch interval keeps the event
    # loop (HTTP, heartbeats, status) answering while a batch trains.
    sys.setswitchinterval(0.0005)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await role.run(stop)

    run(main())

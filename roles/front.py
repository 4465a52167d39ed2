"""One HTTP port in front of the main job's worker processes.

The main job runs one ``driftline worker`` per service, each on a port of its own, so that a
service's training never shares a GIL with another's. Users still reach everything on the one
port they asked for: this front forwards a service's routes (by path prefix,
:data:`ROUTE_PREFIXES`) to the worker that runs it, and anything else (``/auth/whoami``, an unknown
path) to the first worker, which answers it like any worker does. ``/health``, ``/ready`` and
``/metrics`` combine every worker's answers: degraded if one is, ready once all are, every
worker's services and drift alarms in one ``/health``, and one Prometheus exposition holding every
worker's series; ``GET /models`` is every worker's lineage in one object.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from streams.forwarding import FORWARDING, MODELS, forward, forwards, get_each, merged_lineage
from streams.http import unavailable

#: service -> the path prefixes of its routes (kept whole by tests/roles/test_front.py).
ROUTE_PREFIXES: dict[str, tuple[str, ...]] = {
    "forecast": ("/forecast",),
    "ctr": ("/ctr",),
    "rank": ("/rank", "/labeling"),
    "tally": ("/tally",),
}
#: Combined answers and forwarded requests wait this long for a worker (a busy one stalls briefly).
WORKER_TIMEOUT_S = 30.0


def worker_for(path: str, workers: Mapping[str, str]) -> str:
    """The base URL of the worker that answers ``path``: its service's (by route prefix, or
    ``/models/<service>/...``), else the first worker's."""
    for service, url in workers.items():
        prefixes = (*ROUTE_PREFIXES.get(service, ()), f"{MODELS}/{service}/")
        if any(path.startswith(prefix) for prefix in prefixes):
            return url
    return next(iter(workers.values()))


class _Families:
    """A collector handing out metric families parsed from workers' expositions."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def merge_metrics(texts: Iterable[str]) -> bytes:
    """One exposition holding every sample of ``texts``, each family's help and type given once."""
    merged: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            into.samples.extend(family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(merged.values()))  # type: ignore[arg-type]
    return generate_latest(registry)


def make_front(workers: Mapping[str, str]) -> web.Application:
    """The front's application for ``workers`` (service -> base URL, the first one the default)."""
    if not workers:
        raise ValueError("the front needs at least one worker")
    app = web.Application(client_max_size=64 * 1024**2)  # each worker enforces its own, lower limit
    forwards(app, WORKER_TIMEOUT_S)

    async def each(path: str) -> dict[str, tuple[int, bytes]]:
        answers = await get_each(app[FORWARDING], list(workers.values()), path)
        return dict(zip(workers, answers, strict=True))

    async def health(_: web.Request) -> web.Response:
        problems: list[str] = []
        services: dict[str, Any] = {}
        drift: dict[str, Any] = {}
        for service, (status, body) in (await each("/health")).items():
            if status != 200:
                problems.append(f"{service} worker: {body.decode(errors='replace')}")
                continue
            answer = json.loads(body)
            problems += answer.get("problems", [])
            services.update(answer.get("services", {}))
            drift.update(answer.get("drift", {}))
        return web.json_response(
            {
                "status": "degraded" if problems else "ok",
                "problems": problems,
                "role": "main job",
                "workers": dict(workers),
                "drift": drift,
                "services": services,
            }
        )

    async def ready(_: web.Request) -> web.Response:
        waiting = [service for service, (status, _) in (await each("/ready")).items() if status != 200]
        if waiting:
            return unavailable(f"waiting for the worker(s) of {', '.join(waiting)}")
        return web.json_response({"ready": True, "reason": "every worker is ready"})

    async def metrics(_: web.Request) -> web.Response:
        answers = await each("/metrics")
        texts = [body.decode() for status, body in answers.values() if status == 200]
        return web.Response(body=merge_metrics(texts), content_type="text/plain", charset="utf-8")

    async def models(request: web.Request) -> web.Response:
        return await merged_lineage(request, list(workers.values()))

    async def forward_to_worker(request: web.Request) -> web.Response:
        url = worker_for(request.path, workers)
        return await forward(request, url, f"the worker at {url}")

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get(MODELS, models)
    app.router.add_route("*", "/{path:.*}", forward_to_worker)
    return app


class Front:
    """Serves :func:`make_front` on ``host:port`` from a thread of its own until :meth:`stop`."""

    def __init__(self, host: str, port: int, workers: Mapping[str, str]) -> None:
        self.app = make_front(workers)
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def start(self) -> None:
        """Listen, or raise why not (a busy port)."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            self._error = exc
        self._started.set()
        try:
            if self._error is None:
                await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

"""The HTTP face of a worker: health, Prometheus metrics and every service's routes.

Handlers are framework-free (:class:`streams.service.Route`); this module adapts them to aiohttp,
turns :class:`ApiError` and bad JSON into clear JSON errors, and never lets a handler bug take the
server down (it answers 500 with the reason instead).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from streams.service import ApiError, ApiRequest, ApiResponse, Handler, ModelService

log = logging.getLogger(__name__)

HealthProbe = Callable[[], dict[str, Any]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))


def adapt(handler: Handler) -> Callable[[web.Request], Any]:
    """Wrap a framework-free handler as an aiohttp handler."""

    async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    return _json({"error": f"request body is not valid JSON: {exc}"}, 400)
        api_request = ApiRequest(
            method=request.method,
            path_params=dict(request.match_info),
            query=dict(request.query),
            body=body,
        )
        try:
            answer: ApiResponse = await handler(api_request)
        except ApiError as exc:
            return _json({"error": exc.message}, exc.status)
        except Exception as exc:  # a handler bug must not kill the server
            log.exception("handler for %s %s failed", request.method, request.path)
            return _json({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)
        if answer.content_type == "application/json":
            return _json(answer.body, answer.status)
        return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)

    return aiohttp_handler


def make_app(
    services: Iterable[ModelService],
    metrics_text: Callable[[], bytes] | None = None,
    health: HealthProbe | None = None,
) -> web.Application:
    """An aiohttp application serving ``/health``, ``/metrics`` and each service's routes."""
    app = web.Application(client_max_size=64 * 1024**2)
    services = list(services)

    async def health_handler(_: web.Request) -> web.Response:
        report = health() if health else {"status": "ok"}
        return _json(report, 200 if report.get("status") == "ok" else 503)

    async def metrics_handler(_: web.Request) -> web.Response:
        text = metrics_text() if metrics_text else b""
        return web.Response(body=text, content_type="text/plain", charset="utf-8")

    app.router.add_get("/health", health_handler)
    app.router.add_get("/metrics", metrics_handler)
    for service in services:
        for route in service.routes():
            app.router.add_route(route.method, route.path, adapt(route.handler))
    return app

"""The HTTP face of a process: health, readiness, Prometheus metrics and every service's routes.

Handlers are framework-free (:class:`streams.service.Route`); this module adapts them to aiohttp,
turns :class:`ApiError` and bad JSON into clear JSON errors, and never lets a handler bug take the
server down (it answers 500 with the reason instead). A handler that raises
:class:`~streams.service.NotOwner` (the key lives on another worker's partition) is proxied to
the owner that ``owner_url`` names, once; with no owner known, or on a request that was already
proxied, the answer is 503 with ``Retry-After``, never a wrong or missing answer.

``/health`` is liveness: always 200, with ``status`` ok or degraded. ``/ready`` answers 503 with
``Retry-After`` until the process owns and has restored its partitions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from streams.service import ApiError, ApiRequest, ApiResponse, Handler, NotOwner, Route

log = logging.getLogger(__name__)

HealthProbe = Callable[[], dict[str, Any]]
ReadyProbe = Callable[[], tuple[bool, str]]
#: (service, partition) -> base URL of the worker that owns it, or None while unknown.
OwnerLookup = Callable[[str, int], str | None]
PROXIED = "X-Driftline-Proxied"
PROXY_SESSION = web.AppKey("proxy_session", aiohttp.ClientSession)
RETRY_AFTER_S = "1"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str), headers=headers)


def unavailable(reason: str) -> web.Response:
    return _json({"error": reason}, 503, {"Retry-After": RETRY_AFTER_S})


async def _proxy(request: web.Request, url: str, raw: bytes) -> web.Response:
    session: aiohttp.ClientSession = request.app[PROXY_SESSION]
    target = url.rstrip("/") + request.path_qs
    headers = {PROXIED: "1", "Content-Type": request.headers.get("Content-Type", "application/json")}
    try:
        async with session.request(request.method, target, data=raw or None, headers=headers) as answer:
            body = await answer.read()
            extra = {k: v for k, v in answer.headers.items() if k in ("Retry-After",)}
            return web.Response(
                body=body, status=answer.status, content_type=answer.content_type, headers=extra
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return unavailable(f"the owner of this key ({url}) did not answer: {type(exc).__name__}")


def adapt(handler: Handler, owner_url: OwnerLookup | None = None) -> Callable[[web.Request], Any]:
    """Wrap a framework-free handler as an aiohttp handler."""

    async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
        body: Any = None
        raw = await request.read() if request.can_read_body else b""
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
            if exc.status == 503:  # nothing to serve yet: say when to come back
                return unavailable(exc.message)
            return _json({"error": exc.message}, exc.status)
        except NotOwner as exc:
            url = None
            if owner_url is not None and exc.partition is not None and PROXIED not in request.headers:
                url = owner_url(exc.service, exc.partition)
            if url is None:
                return unavailable(f"{exc}; no owner is known right now (partitions are moving)")
            return await _proxy(request, url, raw)
        except Exception as exc:  # a handler bug must not kill the server
            log.exception("handler for %s %s failed", request.method, request.path)
            return _json({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)
        if answer.content_type == "application/json":
            return _json(answer.body, answer.status)
        return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)

    return aiohttp_handler


class HasRoutes(Protocol):
    def routes(self) -> list[Route]: ...


def make_app(
    services: Iterable[HasRoutes],
    metrics_text: Callable[[], bytes] | None = None,
    health: HealthProbe | None = None,
    ready: ReadyProbe | None = None,
    owner_url: OwnerLookup | None = None,
) -> web.Application:
    """An aiohttp application serving ``/health``, ``/ready``, ``/metrics`` and each service's routes."""
    app = web.Application(client_max_size=64 * 1024**2)

    async def health_handler(_: web.Request) -> web.Response:
        return _json(health() if health else {"status": "ok"})

    async def ready_handler(_: web.Request) -> web.Response:
        is_ready, reason = ready() if ready else (True, "ready")
        return _json({"ready": True, "reason": reason}) if is_ready else unavailable(reason)

    async def metrics_handler(_: web.Request) -> web.Response:
        text = metrics_text() if metrics_text else b""
        return web.Response(body=text, content_type="text/plain", charset="utf-8")

    async def session_context(app: web.Application):  # type: ignore[no-untyped-def]
        app[PROXY_SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        yield
        await app[PROXY_SESSION].close()

    app.cleanup_ctx.append(session_context)
    app.router.add_get("/health", health_handler)
    app.router.add_get("/ready", ready_handler)
    app.router.add_get("/metrics", metrics_handler)
    for route in (r for service in services for r in service.routes()):
        app.router.add_route(route.method, route.path, adapt(route.handler, owner_url))
    return app

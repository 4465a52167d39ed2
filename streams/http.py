"""The HTTP face of a process: health, readiness, Prometheus metrics and every service's routes.

Handlers are framework-free (:class:`streams.service.Route`); this module adapts them to aiohttp,
turns :class:`ApiError` and bad JSON into clear JSON errors, and never lets a handler bug take the
server down (it answers 500 with the reason instead). A handler that raises
:class:`~streams.service.NotOwner` (the key lives on another worker's partition) is proxied to
the owner that ``owner_url`` names, once; with no owner known, or on a request that was already
proxied, the answer is 503 with ``Retry-After``, never a wrong or missing answer.

``/health`` is liveness: always 200, with ``status`` ok or degraded. ``/ready`` answers 503 with
``Retry-After`` until the process owns and has restored its partitions.

Every route is guarded as :mod:`streams.auth` says (401/403/429 before the handler runs) and held to
:mod:`streams.limits` (413 for a body past the limit, 400 for JSON past the depth or size limits,
503 for a handler past the time limit). aiohttp's own refusals (404, 405) are JSON too. HTML
answers carry a Content-Security-Policy that allows only this server's scripts.

A JSON :class:`ApiResponse` whose body is ``bytes`` is sent as is: a route that answers the same
body many times encodes it once with :func:`json_bytes`. Timeouts use ``asyncio.timeout``, not
``wait_for``, which started a task (and a loop iteration) per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, Protocol

import orjson
from aiohttp import web

from streams.auth import AuthError, HttpSecurity, installed, required_role
from streams.forwarding import forward, forwards
from streams.limits import BadJson, Limits, parse_json
from streams.service import ApiError, ApiRequest, ApiResponse, NotOwner, Route
from streams.tokens import Role, token_from_header

log = logging.getLogger(__name__)

HealthProbe = Callable[[], dict[str, Any]]
ReadyProbe = Callable[[], tuple[bool, str]]
#: (service, partition) -> base URL of the worker that owns it, or None while unknown.
OwnerLookup = Callable[[str, int], str | None]
PROXIED = "X-Driftline-Proxied"
#: How long a request proxied to its key's owner may take.
PROXY_TIMEOUT_S = 5.0
#: The security an application's routes are guarded by, so routes added later get the same.
SECURITY = web.AppKey("security", HttpSecurity)
RETRY_AFTER_S = "1"
#: Pages run only this server's scripts (no inline script, no eval), load nothing from elsewhere
#: and cannot be framed; their inline styles are allowed.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Every JSON answer's Content-Type, encoded here or by the route.
JSON_TYPE = {"content_type": "application/json", "charset": "utf-8"}
#: Bodies past this size are decoded and checked in a thread, so the event loop keeps answering.
DECODE_IN_THREAD_BYTES = 64 * 1024
AUTH_SCRIPT = resources.files("streams").joinpath("static/driftline-auth.js").read_text(encoding="utf-8")


#: orjson with the standard library's conversions: keys that are not strings become strings, and
#: what JSON has no type for (datetimes and dataclasses too) is written as its ``str``; numpy
#: numbers and arrays are written as numbers (``json.dumps`` wrote most of them as strings).
_ORJSON_OPTIONS = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_SERIALIZE_NUMPY
)


def json_bytes(body: Any) -> bytes:
    """``body`` as this server encodes every JSON answer; a route that answers the same body many
    times may encode it once and answer with these bytes. orjson: 5 us for a 100-score answer
    against 180 with :func:`json.dumps` (measured); a NaN is written as ``null``, which is JSON."""
    return orjson.dumps(body, default=str, option=_ORJSON_OPTIONS)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json_bytes(body), status=status, headers=headers, **JSON_TYPE)


def unavailable(reason: str) -> web.Response:
    return _json({"error": reason}, 503, {"Retry-After": RETRY_AFTER_S})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status, headers)


class RequestRefused(Exception):
    """A request answered before its handler ran."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.response = _error(status, message, headers)


async def _read_body(request: web.Request, limits: Limits) -> bytes:
    """The request body within the size and time limits; raise :class:`RequestRefused` otherwise."""
    if not request.can_read_body:
        return b""
    if (request.content_length or 0) > limits.max_body_bytes:
        raise RequestRefused(413, _too_large(limits))
    try:
        async with asyncio.timeout(limits.timeout_s):  # no task per request, unlike wait_for
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestRefused(413, _too_large(limits)) from None
    except TimeoutError:
        raise RequestRefused(408, f"the request body did not arrive within {limits.timeout_s:g}s") from None


async def _decoded(raw: bytes, limits: Limits) -> Any:
    """The body as JSON within the limits; large bodies decode in a thread, off the event loop."""
    if len(raw) > DECODE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parse_json, raw, limits)
    return parse_json(raw, limits)


def _too_large(limits: Limits) -> str:
    return f"request body too large (the limit is {limits.max_body_bytes} bytes)"


def adapt(
    route: Route, security: HttpSecurity, owner_url: OwnerLookup | None = None
) -> Callable[[web.Request], Any]:
    """Wrap a framework-free route as an aiohttp handler, guarded and limited by ``security``."""
    needed = required_role(route)
    limits = security.limits

    async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
        try:
            principal = security.authorize(needed, request.headers.get("Authorization"))
            raw = await _read_body(request, limits)
            body = await _decoded(raw, limits) if raw else None
        except AuthError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except RequestRefused as exc:
            return exc.response
        except BadJson as exc:
            return _error(400, str(exc))
        api_request = ApiRequest(
            method=request.method,
            path_params=dict(request.match_info),
            query=dict(request.query),
            body=body,
            principal=principal.name if principal else None,
        )
        try:
            async with asyncio.timeout(limits.timeout_s):
                answer: ApiResponse = await route.handler(api_request)
        except ApiError as exc:
            if exc.status == 503:  # nothing to serve yet: say when to come back
                return unavailable(exc.message)
            return _error(exc.status, exc.message)
        except NotOwner as exc:
            url = None
            if owner_url is not None and exc.partition is not None and PROXIED not in request.headers:
                url = owner_url(exc.service, exc.partition)
            if url is None:
                return unavailable(f"{exc}; no owner is known right now (partitions are moving)")
            return await forward(request, url, f"the owner of this key ({url})", {PROXIED: "1"})
        except TimeoutError:
            return unavailable(f"the request did not finish within {limits.timeout_s:g}s")
        except Exception as exc:  # a handler bug must not kill the server
            log.exception("handler for %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}: {exc}")
        if answer.content_type != "application/json":
            return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)
        if isinstance(answer.body, bytes):  # encoded once by the route (see json_bytes), sent as is
            return web.Response(body=answer.body, status=answer.status, **JSON_TYPE)
        return _json(answer.body, answer.status)

    return aiohttp_handler


@web.middleware
async def _hardened(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path, wrong method) as JSON; safety headers on every answer."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        response = _error(exc.status, exc.reason, headers)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response


class HasRoutes(Protocol):
    def routes(self) -> list[Route]: ...


def add_routes(app: web.Application, routes: Iterable[Route], owner_url: OwnerLookup | None = None) -> None:
    """Serve ``routes`` from ``app`` (made by :func:`make_app`), guarded by the app's own security."""
    for route in routes:
        app.router.add_route(route.method, route.path, adapt(route, app[SECURITY], owner_url))


def make_app(
    services: Iterable[HasRoutes],
    metrics_text: Callable[[], bytes] | None = None,
    health: HealthProbe | None = None,
    ready: ReadyProbe | None = None,
    owner_url: OwnerLookup | None = None,
    security: HttpSecurity | None = None,
) -> web.Application:
    """An aiohttp application serving ``/health``, ``/ready``, ``/metrics`` and each service's routes.

    ``security`` defaults to the process's installed one (:func:`streams.auth.installed`).
    """
    security = security or installed()
    app = web.Application(client_max_size=security.limits.max_body_bytes, middlewares=[_hardened])
    app[SECURITY] = security

    async def health_handler(_: web.Request) -> web.Response:
        return _json(health() if health else {"status": "ok"})

    async def ready_handler(_: web.Request) -> web.Response:
        is_ready, reason = ready() if ready else (True, "ready")
        return _json({"ready": True, "reason": reason}) if is_ready else unavailable(reason)

    async def metrics_handler(_: web.Request) -> web.Response:
        text = metrics_text() if metrics_text else b""
        return web.Response(body=text, content_type="text/plain", charset="utf-8")

    async def whoami_handler(request: web.Request) -> web.Response:
        token = token_from_header(request.headers.get("Authorization"))
        principal = security.store.authenticate(token) if token else None
        if principal is None:
            reason = "unknown or revoked token" if token else "no token sent"
            return _error(401, f"{reason}: {security.how_to_get_a_token(Role.READER)}")
        return _json({"name": principal.name, "role": principal.role.label})

    async def auth_script_handler(_: web.Request) -> web.Response:
        return web.Response(text=AUTH_SCRIPT, content_type="text/javascript", charset="utf-8")

    async def tokens_context(_: web.Application):  # type: ignore[no-untyped-def]
        async with security.following():
            yield

    forwards(app, PROXY_TIMEOUT_S)
    app.cleanup_ctx.append(tokens_context)
    app.router.add_get("/health", health_handler)
    app.router.add_get("/ready", ready_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/auth/whoami", whoami_handler)
    app.router.add_get("/driftline-auth.js", auth_script_handler)
    add_routes(app, (r for service in services for r in service.routes()), owner_url)
    return app

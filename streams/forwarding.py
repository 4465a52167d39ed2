"""Forwarding an HTTP request to another driftline process, and asking several at once.

One process answers for another in three places: a worker proxies a key owned elsewhere to its
owner (:mod:`streams.http`), the main job's one port hands each route to the worker that runs it
(:mod:`roles.front`), and a serving replica sends lineage requests to a worker (:mod:`roles.serving`).
All of them forward the request as it came (method, path and query, body, end-to-end headers, the
caller's token: the other process checks it again) and answer what the other process answered,
body bytes unchanged (compressed ones too) with its end-to-end headers. A process that does not
answer is a 503 with ``Retry-After`` saying who did not answer, never a 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence

import aiohttp
from aiohttp import web

#: The forwarding client of an application (see :func:`forwards`).
FORWARDING = web.AppKey("forwarding_session", aiohttp.ClientSession)
#: Headers that describe one connection, not the message (and Host, which names this process):
#: never forwarded either way. Bodies pass through as bytes, so Content-Encoding goes with them.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)  # fmt: skip
#: Lineage of every service (:mod:`streams.lifecycle_routes`).
MODELS = "/models"


def forwards(app: web.Application, timeout_s: float) -> None:
    """Give ``app`` a client for forwarding, ``app[FORWARDING]``, for as long as it runs.

    The client leaves bodies compressed (they pass through as bytes) and gives up after ``timeout_s``.
    """

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as client:
            app[FORWARDING] = client
            yield

    app.cleanup_ctx.append(session)


def end_to_end(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without the hop-by-hop ones."""
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


async def forward(
    request: web.Request, base: str, who: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``request`` sent to the process at ``base`` (with ``headers`` added), and its answer.

    ``who`` names that process in the 503 when it does not answer.
    """
    sent = {**end_to_end(request.headers), **(headers or {})}
    raw = await request.read()  # read once: aiohttp keeps the bytes of a body already read
    try:
        async with request.app[FORWARDING].request(
            request.method, base.rstrip("/") + request.path_qs, data=raw or None, headers=sent
        ) as answer:
            body = await answer.read()
            return web.Response(body=body, status=answer.status, headers=end_to_end(answer.headers))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _unavailable(f"{who} did not answer: {type(exc).__name__}")


async def get(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    """Status and body of a GET, or 0 and the reason when nothing answers."""
    try:
        async with session.get(url, headers=headers) as answer:
            return answer.status, await answer.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{url} did not answer: {type(exc).__name__}: {exc}".encode()


async def get_each(
    session: aiohttp.ClientSession, bases: Sequence[str], path: str, headers: Mapping[str, str] | None = None
) -> list[tuple[int, bytes]]:
    """:func:`get` of ``path`` from every base URL at once, in the order of ``bases``."""
    return list(await asyncio.gather(*(get(session, base.rstrip("/") + path, headers) for base in bases)))


async def merged_lineage(request: web.Request, bases: Sequence[str]) -> web.Response:
    """``GET /models`` of every process at ``bases``, with the caller's token, as one object.

    Services come from the processes that answered 200; when none did, the first one's answer
    says why (401, 404: it keeps no lineage), or a 503 when it did not answer at all.
    """
    auth = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    answers = await get_each(request.app[FORWARDING], bases, MODELS, auth)
    found = [json.loads(body) for status, body in answers if status == 200]
    if found:
        return web.json_response({service: v for lineage in found for service, v in lineage.items()})
    status, body = answers[0]
    if status == 0:
        return _unavailable(body.decode(errors="replace"))
    return web.Response(body=body, status=status, content_type="application/json")


def _unavailable(reason: str) -> web.Response:
    """:func:`streams.http.unavailable`, imported when needed: that module forwards through this one."""
    from streams.http import unavailable

    return unavailable(reason)

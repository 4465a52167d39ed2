"""What every role's HTTP face shares: the server's start and stop, the common ``/health`` fields,
the dashboard page (:mod:`streams.dashboard`) and the process's one status board, followed while
the process serves.

A worker and a serving replica differ in what they run beside HTTP, not in how they answer probes:
``/health`` is a 200 liveness answer whose ``status`` is ok or degraded (with the problems), and
``/ready`` (shaped by :func:`streams.http.make_app`) answers 503 with ``Retry-After`` until ready.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from streams.config import Settings
from streams.dashboard import attach as attach_dashboard
from streams.status import StatusBoard

log = logging.getLogger(__name__)

#: Seconds between a role's status rows on the compacted status topic.
STATUS_INTERVAL_S = 2.0


def health_body(
    role: str, instance: str, started: float, problems: list[str], services: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The ``/health`` answer: status, problems, who and how long, ``extra`` fields, then per service."""
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "instance": instance,
        "role": role,
        "uptime_s": round(time.time() - started, 1),
        **extra,
        "services": services,
    }


@contextlib.asynccontextmanager
async def serving_http(
    settings: Settings, app: web.Application, what: str, board: StatusBoard
) -> AsyncIterator[None]:
    """Serve ``app`` (with the dashboard of ``board`` beside its routes) on the settings' host and
    port for the duration of the block, following the status topic into ``board`` meanwhile."""
    attach_dashboard(app, board)
    runner = web.AppRunner(app, access_log=None)
    async with board.following():
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.http_host, settings.http_port).start()
            log.info("%s: HTTP on %s", what, settings.url)
            yield
        finally:
            await runner.cleanup()

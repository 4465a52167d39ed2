"""The dashboard: every service's live status, drift alarms and model versions on one web page.

The page (``static/dashboard.html`` and ``dashboard.js``, charts drawn by the vendored uPlot in
``static/vendor/``) is open, like every page, and loads nothing from elsewhere. Its data comes from
routes that need a reader token when queries do: ``/status``, served here from the status topic
(the same :class:`~streams.status.StatusBoard` rows the terminal view of ``driftline run`` shows,
folded per service), plus ``/health`` (drift alarms) and ``/models`` (versions, promote, rollback),
which the page treats as optional: a 404 there is shown as "not available".

The board is made on the first ``/status`` request, so a process nobody watches opens no extra
Kafka consumer. Requests read it in a thread, off the event loop, one at a time: a request that
comes while another is still reading answers the rows read last instead of waiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from importlib import resources

from aiohttp import web
from kafka.errors import KafkaError

from streams.http import add_routes
from streams.schemas import ServiceStatus
from streams.service import ApiError, ApiRequest, ApiResponse, Handler, Route
from streams.status import DEFAULT_STALE_S, StatusBoard, summarize

#: path -> (file under streams/static, content type) of what the page loads.
ASSETS: dict[str, tuple[str, str]] = {
    "/dashboard": ("dashboard.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}
#: How long one ``/status`` request waits for status rows that have not arrived yet.
POLL_S = 0.2


def _asset(name: str) -> str:
    return resources.files("streams").joinpath("static", name).read_text(encoding="utf-8")


class Dashboard:
    """The dashboard's routes: its page and assets (open) and ``/status`` (reader)."""

    def __init__(self, bootstrap: str, stale_s: float = DEFAULT_STALE_S) -> None:
        self.bootstrap = bootstrap
        self.stale_s = stale_s
        self._board: StatusBoard | None = None
        self._last: list[ServiceStatus] = []
        self._reading = threading.Lock()

    def routes(self) -> list[Route]:
        pages = [Route("GET", path, self._serves(*asset), role="open") for path, asset in ASSETS.items()]
        return [*pages, Route("GET", "/status", self._status)]

    @staticmethod
    def _serves(name: str, content_type: str) -> Handler:
        body = _asset(name)

        async def handler(_: ApiRequest) -> ApiResponse:
            return ApiResponse(body, content_type=content_type)

        return handler

    async def _status(self, _: ApiRequest) -> ApiResponse:
        try:
            rows = await asyncio.to_thread(self._read)
        except KafkaError as exc:
            raise ApiError(503, f"the status topic cannot be read: {exc}") from exc
        return ApiResponse({"ts": time.time(), "services": [s.to_json() for s in summarize(rows)]})

    def _read(self) -> list[ServiceStatus]:
        """The live rows; while another request is still reading (a slow broker), the rows it read last."""
        if not self._reading.acquire(blocking=False):
            return [row for row in self._last if time.time() - row.ts <= self.stale_s]
        try:
            if self._board is None:
                self._board = StatusBoard(self.bootstrap, stale_s=self.stale_s)
            self._board.poll(timeout_s=POLL_S)
            self._last = self._board.rows()
            return self._last
        finally:
            self._reading.release()

    async def close(self, _: web.Application | None = None) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._reading:
            if self._board is not None:
                self._board.close()
                self._board = None


def attach(app: web.Application, bootstrap: str) -> Dashboard:
    """Serve the dashboard from ``app`` (made by :func:`streams.http.make_app`) until it stops."""
    dashboard = Dashboard(bootstrap)
    add_routes(app, dashboard.routes())
    app.on_cleanup.append(dashboard.close)
    return dashboard

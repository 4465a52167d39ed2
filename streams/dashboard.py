"""The dashboard: every service's live status, drift alarms and model versions on one web page.

The page (``static/dashboard.html`` and ``dashboard.js``, charts drawn by the vendored uPlot in
``static/vendor/``) is open, like every page, and loads nothing from elsewhere. Its data comes from
routes that need a reader token when queries do: ``/status``, served here from the status topic
(the same :class:`~streams.status.StatusBoard` rows the terminal view of ``driftline run`` shows,
folded per service), plus ``/health`` (drift alarms) and ``/models`` (versions, promote, rollback),
which the page treats as optional: a 404 there is shown as "not available".

The rows come from the process's one board, followed while the process serves (a worker's owner
directory reads the same board); ``/status`` answers 503 with ``Retry-After`` until the board has
read the topic to the end it had when the process started, so a half-read topic never shows as
missing services.
"""

from __future__ import annotations

import time
from importlib import resources

from aiohttp import web

from streams.http import add_routes
from streams.service import ApiError, ApiRequest, ApiResponse, Handler, Route
from streams.status import StatusBoard, summarize

#: path -> (file under streams/static, content type) of what the page loads.
ASSETS: dict[str, tuple[str, str]] = {
    "/dashboard": ("dashboard.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}


def _asset(name: str) -> str:
    return resources.files("streams").joinpath("static", name).read_text(encoding="utf-8")


class Dashboard:
    """The dashboard's routes: its page and assets (open) and ``/status`` (reader)."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

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
        waiting = self.board.not_read_yet()
        if waiting is not None:
            raise ApiError(503, f"the status topic is not read yet: {waiting}")
        rows = self.board.rows()
        return ApiResponse({"ts": time.time(), "services": [s.to_json() for s in summarize(rows)]})


def attach(app: web.Application, board: StatusBoard) -> Dashboard:
    """Serve the dashboard of ``board``'s rows from ``app`` (made by :func:`streams.http.make_app`)."""
    dashboard = Dashboard(board)
    add_routes(app, dashboard.routes())
    return dashboard

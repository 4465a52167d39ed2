"""The forecast HTTP API over any source of forecasts: the forecast worker's table or a serving replica.

Both processes answer ``GET /forecast/{series}?horizon=H`` with the body :func:`forecast_body`
renders from the series' latest :class:`Forecast` record, so the same forecast gives the same bytes
wherever it is asked for. Where the record comes from, and the 404/503 answers when there is none,
is the process's own ``latest`` lookup. A series is asked for far more often than it is forecast: a
process whose lookup returns the table's own record (a serving replica) passes ``encode_once``, and
each record's answer is then encoded once and sent as those bytes until the record is replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.http import json_bytes
from streams.schemas import Forecast
from streams.service import ApiError, ApiRequest, ApiResponse, Route

#: Encoded answers kept at most (one per series; all are dropped when full, as a new one comes).
MAX_ENCODED = 100_000


def forecast_body(record: Forecast, horizon: int) -> dict[str, Any]:
    """The answer body: ``record`` (the whole horizon of the model) cut to its first ``horizon`` steps."""
    cut = record.model_copy(update={"horizon": horizon, "values": record.values[:horizon]})
    return cut.model_dump(by_alias=True)


def parse_horizon(raw: str | None, limit: int) -> int:
    """The ``?horizon=`` query (default: ``limit``, the model's horizon); a 400 saying what is wrong."""
    if raw is None:
        return limit
    try:
        horizon = int(raw)
    except ValueError:
        raise ApiError(400, f"horizon must be an integer from 1 to {limit}, got {raw!r}") from None
    if not 1 <= horizon <= limit:
        raise ApiError(
            400, f"horizon must be from 1 to {limit} (this model forecasts {limit} steps), got {horizon}"
        )
    return horizon


class ForecastRoutes:
    """``GET /forecast/{series}`` bound to what a process has.

    ``latest(series)`` returns the series' latest forecast over the model's whole ``horizon``, or
    raises the :class:`ApiError` (404, 503) or ``NotOwner`` that says why there is none here. Read
    without a lock on purpose: a table entry is replaced whole, never mutated, so a query sees the
    old forecast or the new one and never waits for a training batch.
    """

    def __init__(self, horizon: int, latest: Callable[[str], Forecast], encode_once: bool = False) -> None:
        self.horizon = horizon
        self.latest = latest
        self.encode_once = encode_once
        #: series -> (the record, the horizon asked for, its answer's bytes); only the event loop
        #: touches it, and an entry counts only while its record is still the series' latest.
        self._encoded: dict[str, tuple[Forecast, int, bytes]] = {}

    def routes(self) -> list[Route]:
        return [Route("GET", "/forecast/{series}", self.get_forecast)]

    async def get_forecast(self, request: ApiRequest) -> ApiResponse:
        """The latest forecast of a series, cut to ``?horizon=H`` steps."""
        horizon = parse_horizon(request.query.get("horizon"), self.horizon)
        record = self.latest(request.path_params["series"])
        if not self.encode_once:  # a fresh record per query: keeping its bytes would only cost memory
            return ApiResponse(forecast_body(record, horizon))
        return ApiResponse(self.encoded(record, horizon))

    def encoded(self, record: Forecast, horizon: int) -> bytes:
        """The answer's bytes for ``record`` cut to ``horizon``, encoded once while it is the latest."""
        kept = self._encoded.get(record.series)
        if kept is not None and kept[0] is record and kept[1] == horizon:
            return kept[2]
        body = json_bytes(forecast_body(record, horizon))
        if len(self._encoded) >= MAX_ENCODED:
            self._encoded.clear()
        self._encoded[record.series] = (record, horizon, body)
        return body

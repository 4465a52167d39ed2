"""The forecast HTTP API over any source of forecasts: the forecast worker's table or a serving replica.

Both processes answer ``GET /forecast/{series}?horizon=H`` with the body :func:`forecast_body`
renders from the series' latest :class:`Forecast` record, so the same forecast gives the same bytes
wherever it is asked for. Where the record comes from, and the 404/503 answers when there is none,
is the process's own ``latest`` lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.schemas import Forecast
from streams.service import ApiError, ApiRequest, ApiResponse, Route


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

    def __init__(self, horizon: int, latest: Callable[[str], Forecast]) -> None:
        self.horizon = horizon
        self.latest = latest

    def routes(self) -> list[Route]:
        return [Route("GET", "/forecast/{series}", self.get_forecast)]

    async def get_forecast(self, request: ApiRequest) -> ApiResponse:
        """The latest forecast of a series, cut to ``?horizon=H`` steps."""
        horizon = parse_horizon(request.query.get("horizon"), self.horizon)
        return ApiResponse(forecast_body(self.latest(request.path_params["series"]), horizon))

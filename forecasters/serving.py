"""The forecast serving part of a replica: answers ``GET /forecast/{series}`` from the ``forecasts`` topic.

The forecast worker trains and publishes every series' newest forecast on ``forecasts`` (key: the
series). A replica (``roles/serving.py`` hosts it) feeds each of those records to
:meth:`ForecastServing.apply`, which replaces the series' table entry by one assignment, and answers
with :func:`forecasters.routes.forecast_body` like the worker, so the same forecast gives the same
bytes from either. Queries never share a process with training. Until the replica has read the
topic up to where it stood at start, queries and ``/ready`` answer 503: an older forecast of a series
could otherwise be served while its newest one is still on the way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forecasters.routes import ForecastRoutes
from forecasters.service import SERVICE_OPTIONS
from forecasters.zoo import ForecasterSpec
from streams.schemas import Forecast, Record
from streams.service import ApiError, Route


class ForecastServing:
    """Serving part for replicas: the latest forecast of every series, as published."""

    name = "forecast"
    follows = "forecasts"
    record_type = Forecast

    def __init__(self, horizon: int) -> None:
        #: The trainer's horizon: what ``?horizon=`` may ask for, and what every record must hold.
        self.horizon = horizon
        self.table: dict[str, Forecast] = {}
        self._caught_up = False
        self._model_version = 0
        self.api = ForecastRoutes(horizon, self.latest_forecast, encode_once=True)  # table records

    def routes(self) -> list[Route]:
        return self.api.routes()

    def ready(self) -> bool:
        return self._caught_up

    def caught_up(self) -> None:
        self._caught_up = True

    def model_version(self) -> int:
        return self._model_version

    def apply(self, record: Record) -> None:
        """Serve ``record`` as its series' latest forecast (the topic holds each series in order)."""
        if not isinstance(record, Forecast):
            raise ValueError(f"expected a forecast, got {type(record).__name__}")
        if record.horizon != self.horizon or len(record.values) != self.horizon:
            steps = len(record.values)
            raise ValueError(
                f"forecast of {record.series!r} covers {steps} steps (horizon {record.horizon}); this "
                f"replica serves horizon {self.horizon} (give it the trainer's forecast options)"
            )
        self.table[record.series] = record  # one assignment: a reader sees the old or the new
        self._model_version = record.model_version

    def latest_forecast(self, series: str) -> Forecast:
        if not self._caught_up:
            raise ApiError(503, "catching up with the forecasts topic; try again shortly")
        record = self.table.get(series)
        if record is None:
            raise ApiError(404, f"unknown series {series!r}: no forecast of it has been published")
        return record


def build_serving(checkpoint_root: Path, **options: Any) -> ForecastServing:
    """A forecast serving part from the same ``forecast.*`` options as the worker's ``build_service``.

    Only the horizon matters here; the other options are checked as the worker checks them (an
    unknown one is an error) and otherwise ignored, so one option list configures both roles.
    """
    spec_options = {k: v for k, v in options.items() if k not in SERVICE_OPTIONS}
    return ForecastServing(ForecasterSpec.from_dict(spec_options).horizon)

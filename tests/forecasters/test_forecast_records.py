"""The forecast records a batch emits: built without pydantic's per-record validation, yet the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from forecasters.batch import WindowBatch
from forecasters.learner import StatelessForecaster
from forecasters.service import ForecastService
from forecasters.zoo import ForecasterSpec
from streams.schemas import Forecast, Observation
from streams.topics import topic_name

SPEC = ForecasterSpec(kind="onenet", seq_len=8, horizon=3, channels=2, marks=4)
OBSERVATIONS = topic_name("observations")


class Constant(StatelessForecaster):
    """Forecasts ``value`` everywhere (NaN for a model gone wrong)."""

    def __init__(self, horizon: int, value: float) -> None:
        self.horizon = horizon
        self.value = value

    def predict(self, batch: WindowBatch) -> torch.Tensor:
        return torch.full((batch.x.shape[0], self.horizon, batch.x.shape[2]), self.value)


def observations(series: list[str], rows: int) -> list[Observation]:
    return [
        Observation(series=s, ts=row * 3600.0, values=[np.sin(row), np.cos(row)])
        for row in range(rows)
        for s in series
    ]


def test_a_batchs_records_equal_validated_ones_and_round_trip() -> None:
    service = ForecastService(SPEC)
    outputs = service.process(OBSERVATIONS, observations(["a", "b"], 9)).outputs
    assert [o.key for o in outputs] == ["a", "b"]
    for output in outputs:
        record = output.record
        assert isinstance(record, Forecast)
        validated = Forecast(**record.model_dump())
        assert record.to_bytes() == validated.to_bytes()
        assert Forecast.model_validate_json(record.to_bytes()) == validated
        assert np.array(record.values).shape == (3, 2) and record.ts == 8 * 3600.0


def test_a_non_finite_forecast_is_refused_with_the_schemas_reason() -> None:
    service = ForecastService(SPEC, Constant(SPEC.horizon, float("nan")))
    with pytest.raises(ValidationError, match="finite"):
        service.process(OBSERVATIONS, observations(["a"], 8))

"""ForecastService without a worker: ``process`` and the route handler called directly on synthetic data."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forecasters.batch import WindowBatch
from forecasters.data import Scaler
from forecasters.pretrained import save_pretrained
from forecasters.service import ForecastService, build_service
from forecasters.zoo import ForecasterSpec, build_forecaster
from streams.schemas import Forecast, Observation
from streams.service import ApiError, ApiRequest
from streams.topics import topic_name
from tests.locking import lock_held_elsewhere

from .conftest import sine_values

SPEC = ForecasterSpec(kind="onenet", seq_len=8, horizon=3, channels=2, marks=4)
OBSERVATIONS = topic_name("observations")
HOUR = 3600.0


def observations(series: list[str], start: int, count: int) -> list[Observation]:
    """Rows ``start..start+count`` of a sine for every series, interleaved in time order."""
    values = sine_values(start + count, 2)
    return [
        Observation(series=s, ts=row * HOUR, values=values[row].tolist())
        for row in range(start, start + count)
        for s in series
    ]


def get(service: ForecastService, series: str, **query: str) -> dict[str, Any]:
    answer = asyncio.run(service.get_forecast(ApiRequest("GET", {"series": series}, query)))
    assert answer.status == 200
    return answer.body


def error(service: ForecastService, series: str, **query: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        asyncio.run(service.get_forecast(ApiRequest("GET", {"series": series}, query)))
    return caught.value


def test_forecasts_start_once_a_lookback_is_full_and_training_once_targets_complete() -> None:
    service = ForecastService(SPEC)
    early = service.process(OBSERVATIONS, observations(["a", "b"], 0, 7))
    assert early.outputs == [] and early.metrics["trained_windows"] == 0
    result = service.process(OBSERVATIONS, observations(["a", "b"], 7, 1))
    assert [o.key for o in result.outputs] == ["a", "b"]
    record = result.outputs[0].record
    assert isinstance(record, Forecast) and result.outputs[0].topic == topic_name("forecasts")
    assert np.array(record.values).shape == (3, 2) and record.ts == 7 * HOUR
    assert result.metrics["trained_windows"] == 0
    trained = service.process(OBSERVATIONS, observations(["a", "b"], 8, 3))
    # a pair needs 8 + 3 rows: rows 0..10 complete the first one for each series
    assert trained.metrics["trained_windows"] == 2 and trained.metrics["mse"] > 0
    assert trained.rejected == {}


def test_one_learn_call_per_round_covers_every_ready_series(monkeypatch: pytest.MonkeyPatch) -> None:
    service = ForecastService(SPEC)
    service.process(OBSERVATIONS, observations(["a", "b", "c"], 0, 11))
    calls: list[tuple[str, ...]] = []
    learn = service.learner.learn

    def spy(batch: WindowBatch) -> dict[str, float]:
        calls.append(batch.keys or ())
        return learn(batch)

    monkeypatch.setattr(service.learner, "learn", spy)
    service.process(OBSERVATIONS, observations(["a", "b", "c"], 11, 2))
    assert calls == [("a", "b", "c"), ("a", "b", "c")]


def test_one_big_batch_equals_the_same_events_one_by_one() -> None:
    events = observations(["a", "b"], 0, 14)
    batched, single = ForecastService(SPEC), ForecastService(SPEC)
    single.load_state_dict(copy.deepcopy(batched.state_dict()))  # identical initial weights
    batched.process(OBSERVATIONS, events)
    for event in events:
        single.process(OBSERVATIONS, [event])
    for series in ("a", "b"):
        window_a, window_b = batched.windows.get(series), single.windows.get(series)
        assert window_a is not None and window_b is not None
        assert np.array_equal(window_a.values, window_b.values) and window_a.count == window_b.count


def test_bad_observations_are_rejected_with_reasons_and_the_rest_applied() -> None:
    service = ForecastService(SPEC)
    service.process(OBSERVATIONS, observations(["a"], 0, 3))
    batch = [
        Observation(series="a", ts=3 * HOUR, values=[1.0, 2.0, 3.0]),  # wrong width for series a
        Observation(series="a", ts=1 * HOUR, values=[1.0, 2.0]),  # goes back in time
        Observation(series="new", ts=0.0, values=[1.0]),  # wrong width for the model
        Observation(series="a", ts=4 * HOUR, values=[0.5, 0.5]),
        Forecast(series="a", ts=0.0, horizon=1, values=[[0.0, 0.0]], model="x", model_version=0),
    ]
    result = service.process(OBSERVATIONS, batch)
    assert set(result.rejected) == {0, 1, 2, 4}
    assert "expected an observation, got Forecast" in result.rejected[4]
    assert "has 2 channels, this observation has 3" in result.rejected[0]
    assert "not after" in result.rejected[1]
    assert "serves 2-channel series, got 1" in result.rejected[2]
    window = service.windows.get("a")
    assert window is not None and window.count == 4 and window.last_ts == 4 * HOUR
    assert service.windows.get("new") is None


def test_route_answers_the_latest_forecast_cut_to_the_horizon() -> None:
    service = ForecastService(SPEC)
    service.process(OBSERVATIONS, observations(["a"], 0, 12))
    body = get(service, "a", horizon="2")
    assert body["series"] == "a" and body["horizon"] == 2 and len(body["values"]) == 2
    # rows 10 and 11 each completed a (look-back 8, horizon 3) pair: two updates
    assert body["model"] == "onenet" and body["model_version"] == 0 and body["updates"] == 2
    shares = np.array(body["weights"]["cross_time"]) + np.array(body["weights"]["cross_variable"])
    assert np.allclose(shares, 1.0)
    assert len(get(service, "a")["values"]) == 3  # default: the model's whole horizon


def test_route_errors_say_what_is_wrong() -> None:
    service = ForecastService(SPEC)
    service.process(OBSERVATIONS, observations(["a"], 0, 12) + observations(["young"], 0, 3))
    assert error(service, "nope").status == 404 and "unknown series" in error(service, "nope").message
    young = error(service, "young")
    assert young.status == 404 and "3 of the 8 observations" in young.message
    for bad in ("0", "4", "two"):
        failure = error(service, "a", horizon=bad)
        assert failure.status == 400 and "horizon must be" in failure.message


def test_state_survives_a_restart() -> None:
    service = ForecastService(SPEC)
    service.process(OBSERVATIONS, observations(["a", "b"], 0, 15))
    restarted = ForecastService(SPEC)
    restarted.load_state_dict(copy.deepcopy(service.state_dict()))
    assert get(restarted, "b") == get(service, "b")
    more = observations(["a", "b"], 15, 2)
    first, second = service.process(OBSERVATIONS, more), restarted.process(OBSERVATIONS, more)
    assert [o.record for o in first.outputs] == [o.record for o in second.outputs]
    with pytest.raises(ValueError, match="checkpoint is for"):
        ForecastService(ForecasterSpec(kind="dlinear", seq_len=8, horizon=3, channels=2)).load_state_dict(
            service.state_dict()
        )


def test_build_service_warm_starts_from_the_pretrained_checkpoint(tmp_path: Path) -> None:
    assert build_service(tmp_path, kind="dlinear", seq_len=8, horizon=3, channels=2).model_version() == 0
    learner = build_forecaster(SPEC)
    scaler = Scaler(np.array([10.0, 20.0], np.float32), np.array([2.0, 4.0], np.float32))
    save_pretrained(tmp_path, SPEC, learner, scaler, {"note": "test"})
    version = save_pretrained(tmp_path, SPEC, learner, scaler, {"note": "test"})
    service = build_service(tmp_path, kind="onenet", batch_size=64)
    assert service.spec == SPEC and service.model_version() == version == 2
    assert service.subscriptions()[0].batch_size == 64
    service.process(OBSERVATIONS, [Observation(series="s", ts=0.0, values=[12.0, 16.0])])
    window = service.windows.get("s")
    assert window is not None and window.values[-1].tolist() == [1.0, -1.0]  # scaled by pretraining stats
    with pytest.raises(ValueError, match="contradict the pretrained onenet v2: horizon=5 vs saved 3"):
        build_service(tmp_path, kind="onenet", horizon=5)


def test_queries_do_not_wait_for_a_batch_in_progress() -> None:
    service = ForecastService(SPEC)
    service.process(OBSERVATIONS, observations(["a"], 0, 9))
    with lock_held_elsewhere(service):
        started = time.perf_counter()
        assert get(service, "a")["series"] == "a"
        assert time.perf_counter() - started < 1.0

"""ForecastService without a worker: ``process`` and the route handler called directly on synthetic data."""

from __future__ import annotations

import asyncio
import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from forecasters.batch import WindowBatch
from forecasters.data import Scaler, calendar_features
from forecasters.learner import Forecaster, forecast_errors
from forecasters.pretrained import save_pretrained
from forecasters.service import ForecastService, build_service
from forecasters.zoo import ForecasterSpec, build_forecaster
from streams.http import HasRoutes
from streams.schemas import Forecast, Observation
from streams.service import ApiError, ApiRequest, ApiResponse
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


class LevelLearner(Forecaster):
    """Forecasts one level for every step; ``learn`` scores it, then moves it to the targets' mean."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.level = 0.0

    def predict(self, batch: WindowBatch) -> torch.Tensor:
        return torch.full((batch.x.shape[0], self.horizon, batch.x.shape[2]), self.level)

    def learn(self, batch: WindowBatch) -> dict[str, float]:
        metrics = forecast_errors(self.predict(batch), batch.target)
        self.level = float(batch.target.mean())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = state["level"]


def spy_on_learn(service: ForecastService, monkeypatch: pytest.MonkeyPatch) -> list[WindowBatch]:
    """Every batch ``service.learner.learn`` receives from now on, in call order."""
    calls: list[WindowBatch] = []
    learn = service.learner.learn

    def spy(batch: WindowBatch) -> dict[str, float]:
        calls.append(batch)
        return learn(batch)

    monkeypatch.setattr(service.learner, "learn", spy)
    return calls


def pairs_ending_at(rows: range, values: np.ndarray) -> WindowBatch:
    """The (look-back 8, horizon 3) training pairs of series "a" whose targets end at each of ``rows``."""
    back = np.stack([values[r - 10 : r - 2] for r in rows])
    ahead = np.stack([values[r - 2 : r + 1] for r in rows])
    times = pd.to_datetime(
        np.concatenate([np.arange(r - 10, r - 2) for r in rows]) * HOUR, unit="s", utc=True
    )
    marks = calendar_features(pd.DatetimeIndex(times)).reshape(len(rows), 8, -1)
    keys = ("a",) * len(rows)
    return WindowBatch(torch.from_numpy(back), torch.from_numpy(ahead), torch.from_numpy(marks), keys)


def ask(service: HasRoutes, series: str, **query: str) -> ApiResponse:
    """``GET /forecast/{series}`` through the routes a process serves (a worker's or a replica's)."""
    (route,) = service.routes()
    assert (route.method, route.path) == ("GET", "/forecast/{series}")
    return asyncio.run(route.handler(ApiRequest("GET", {"series": series}, query)))


def get(service: HasRoutes, series: str, **query: str) -> dict[str, Any]:
    answer = ask(service, series, **query)
    assert answer.status == 200
    return answer.body


def error(service: HasRoutes, series: str, **query: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        ask(service, series, **query)
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


def test_a_caught_up_stream_gets_one_update_per_observation(monkeypatch: pytest.MonkeyPatch) -> None:
    service = ForecastService(SPEC)  # the default cap: caught up, it must not matter
    service.process(OBSERVATIONS, observations(["a", "b"], 0, 10))
    calls = spy_on_learn(service, monkeypatch)
    for row in range(10, 16):  # one new observation per series per micro-batch
        result = service.process(OBSERVATIONS, observations(["a", "b"], row, 1))
        assert result.metrics["train_steps"] == 1 and result.metrics["trained_windows"] == 2
    assert service.updates == 6 and [batch.keys for batch in calls] == [("a", "b")] * 6


@pytest.mark.parametrize("cap", [1, 3, 4, 10, 64])
def test_a_backlog_of_one_series_trains_in_chunks_of_max_train_batch(
    cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = ForecastService(SPEC, max_train_batch=cap)
    service.process(OBSERVATIONS, observations(["a"], 0, 10))  # 10 rows: no pair completes yet
    calls = spy_on_learn(service, monkeypatch)
    result = service.process(OBSERVATIONS, observations(["a"], 10, 13))  # 13 pairs
    steps = math.ceil(13 / cap)
    assert result.metrics["train_steps"] == steps and service.updates == steps
    assert result.metrics["trained_windows"] == 13
    assert [len(batch.x) for batch in calls] == [min(cap, 13 - j * cap) for j in range(steps)]
    last_targets = torch.cat([batch.target[:, -1, 0] for batch in calls]).numpy()
    assert np.allclose(last_targets, sine_values(23, 2)[10:23, 0])  # every pair once, in order


@pytest.mark.parametrize(("cap", "sizes"), [(1, [3, 3]), (4, [6])])
def test_the_chunks_of_several_series_share_one_learn_call_per_round(
    cap: int, sizes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = ForecastService(SPEC, max_train_batch=cap)
    service.process(OBSERVATIONS, observations(["a", "b", "c"], 0, 11))
    calls = spy_on_learn(service, monkeypatch)
    service.process(OBSERVATIONS, observations(["a", "b", "c"], 11, 2))
    assert [len(batch.x) for batch in calls] == sizes
    assert sorted(key for batch in calls for key in batch.keys or ()) == ["a", "a", "b", "b", "c", "c"]


def test_each_chunk_is_scored_before_its_update() -> None:
    values = sine_values(20, 2)
    service = ForecastService(SPEC, LevelLearner(SPEC.horizon), max_train_batch=4)
    service.process(OBSERVATIONS, observations(["a"], 0, 10))
    result = service.process(OBSERVATIONS, observations(["a"], 10, 10))  # pairs end at rows 10..19
    targets = pairs_ending_at(range(10, 20), values).target.numpy()
    chunks = [targets[0:4], targets[4:8], targets[8:10]]
    levels = [0.0, chunks[0].mean(), chunks[1].mean()]  # the level each chunk meets before its update
    expected = np.mean(
        np.concatenate([(chunk - level) ** 2 for chunk, level in zip(chunks, levels, strict=True)])
    )
    assert result.metrics["train_steps"] == 3
    assert result.metrics["mse"] == pytest.approx(expected, rel=1e-5)


def test_the_metric_of_a_batched_backlog_is_the_pre_update_models_error() -> None:
    service = ForecastService(SPEC, max_train_batch=8)
    service.process(OBSERVATIONS, observations(["a"], 0, 10))
    per_step = ForecastService(SPEC, max_train_batch=1)
    per_step.load_state_dict(copy.deepcopy(service.state_dict()))
    before = copy.deepcopy(service.learner)
    backlog = observations(["a"], 10, 6)
    pairs = pairs_ending_at(range(10, 16), sine_values(16, 2))
    # one chunk of consecutive steps: each pair is scored before the networks step once, with the
    # ensemble weights and bias advanced pair by pair (test_models proves that equals per-step
    # calls with the networks held still)
    expected = before.learn(WindowBatch(pairs.x, pairs.y, pairs.marks, pairs.keys, sequential=True))
    batched = service.process(OBSERVATIONS, backlog).metrics
    assert batched["train_steps"] == 1
    assert batched["mse"] == pytest.approx(expected["mse"], rel=1e-4)
    assert batched["mae"] == pytest.approx(expected["mae"], rel=1e-4)
    stepped = per_step.process(OBSERVATIONS, backlog).metrics  # later pairs meet updated models
    assert stepped["train_steps"] == 6 and stepped["mse"] != pytest.approx(expected["mse"], rel=1e-4)


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


def test_a_width_change_within_a_series_first_batch_names_the_series() -> None:
    """The series has no window yet: its first row in the same batch sets its width."""
    first, changed = observations(["b"], 0, 1)[0], Observation(series="b", ts=HOUR, values=[1.0, 2.0, 3.0])
    result = ForecastService(SPEC).process(OBSERVATIONS, [first, changed])
    assert result.rejected == {1: "series 'b' has 2 channels, this observation has 3"}


def test_route_answers_the_latest_forecast_cut_to_the_horizon() -> None:
    service = ForecastService(SPEC)
    service.process(OBSERVATIONS, observations(["a"], 0, 12))
    body = get(service, "a", horizon="2")
    assert body["series"] == "a" and body["horizon"] == 2 and len(body["values"]) == 2
    assert body["model"] == "onenet" and body["model_version"] == 0 and body["ts"] == 11 * HOUR
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
    service = ForecastService(SPEC, max_train_batch=8)
    service.process(OBSERVATIONS, observations(["a", "b"], 0, 15))
    restarted = ForecastService(SPEC, max_train_batch=8)
    restarted.load_state_dict(copy.deepcopy(service.state_dict()))
    assert get(restarted, "b") == get(service, "b")
    more = observations(["a", "b"], 15, 12)  # a backlog: two chunks of pairs per series
    first, second = service.process(OBSERVATIONS, more), restarted.process(OBSERVATIONS, more)
    assert first.metrics["train_steps"] == 2 and first.metrics == second.metrics
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
    service = build_service(tmp_path, kind="onenet", batch_size=64, max_train_batch=16)
    assert service.spec == SPEC and service.model_version() == version == 2
    assert service.max_train_batch == 16
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


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_a_bad_max_train_batch_is_refused_with_a_clear_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="max_train_batch must be an integer >= 1"):
        build_service(tmp_path, kind="dlinear", seq_len=8, horizon=3, channels=2, max_train_batch=bad)


def test_series_silent_past_the_ttl_lose_window_and_forecast():
    from forecasters.service import ForecastService
    from forecasters.zoo import ForecasterSpec

    service = ForecastService(
        ForecasterSpec(kind="last-value", seq_len=2, horizon=1, channels=1), series_ttl_s=10
    )
    topic = topic_name("observations")
    service.process(topic, [Observation(series="old", ts=float(t), values=[1.0]) for t in range(3)])
    assert service.windows.get("old") is not None and "old" in service.table
    service.process(topic, [Observation(series="new", ts=float(t), values=[2.0]) for t in range(20, 23)])
    assert service.windows.get("old") is None and "old" not in service.table  # silent since ts 2 < 22 - 10
    assert "new" in service.table

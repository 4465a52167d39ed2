"""The drift monitor: alarms on a lasting rise of the error, not on noise; state round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from streams.drift import DriftMonitor, DriftSettings


def noisy(level: float, n: int, seed: int, spread: float = 0.1) -> list[float]:
    """Synthetic per-batch errors: ``level`` with +-``spread`` relative Gaussian noise."""
    rng = np.random.default_rng(seed)
    return [float(level * (1 + spread * z)) for z in rng.standard_normal(n)]


def alarms_at(monitor: DriftMonitor, errors: list[float]) -> list[int]:
    return [i for i, e in enumerate(errors) if monitor.observe({monitor.metric: e})]


def test_noise_alone_raises_no_alarm_on_any_scale() -> None:
    for scale in (0.001, 0.5, 1000.0):
        monitor = DriftMonitor("ctr", "logloss")
        assert alarms_at(monitor, noisy(scale, 1000, seed=1)) == []
        assert not monitor.in_alarm


def test_a_lasting_rise_raises_one_alarm_within_a_few_batches() -> None:
    monitor = DriftMonitor("ctr", "logloss", settings=DriftSettings(hold=5))
    errors = noisy(0.5, 200, seed=2) + noisy(0.8, 200, seed=3)  # +60%, for good
    alarms = alarms_at(monitor, errors)
    assert len(alarms) == 1 and 200 <= alarms[0] <= 205, alarms
    assert monitor.alarms == 1 and monitor.last_alarm_ts is not None
    view = monitor.view()
    assert view["detector"] == "page-hinkley" and view["alarms"] == 1
    assert not view["in_alarm"]  # held for 5 batches, long over
    monitor.observe({"logloss": 0.8})
    assert monitor.alarms == 1


def test_in_alarm_lasts_hold_batches() -> None:
    monitor = DriftMonitor("ctr", "logloss", settings=DriftSettings(hold=3))
    alarms = alarms_at(monitor, noisy(0.5, 50, seed=4) + [1.0] * 3)
    assert alarms, "a doubled error must alarm"
    assert monitor.in_alarm
    for _ in range(3):
        monitor.observe({"logloss": 1.0})
    assert not monitor.in_alarm


def test_a_falling_error_never_alarms() -> None:
    monitor = DriftMonitor("ctr", "logloss")
    assert alarms_at(monitor, noisy(0.8, 100, seed=5) + noisy(0.3, 300, seed=6)) == []


def test_higher_is_better_metrics_alarm_when_they_fall() -> None:
    monitor = DriftMonitor.for_service("rank", DriftSettings())
    assert monitor is not None and monitor.metric == "ndcg@10"
    ndcg = [1 - e for e in noisy(0.3, 100, seed=7)] + [1 - e for e in noisy(0.6, 50, seed=8)]
    assert len(alarms_at(monitor, ndcg)) == 1


def test_missing_or_non_finite_values_are_skipped() -> None:
    monitor = DriftMonitor("ctr", "logloss")
    assert not monitor.observe({"auc": 0.7})
    assert not monitor.observe({"logloss": float("nan")})
    assert monitor.observed == 0


def test_state_round_trips_mid_stream_and_decides_alike() -> None:
    errors = noisy(0.5, 120, seed=9) + noisy(1.0, 40, seed=10)
    straight = DriftMonitor("ctr", "logloss")
    expected = alarms_at(straight, errors)
    first = DriftMonitor("ctr", "logloss")
    alarms_at(first, errors[:100])
    resumed = DriftMonitor("ctr", "logloss")
    resumed.load_state_dict(first.state_dict())
    assert [100 + i for i in alarms_at(resumed, errors[100:])] == expected
    different = {k for k, v in resumed.state_dict().items() if straight.state_dict()[k] != v}
    assert different == {"last_alarm_ts"}  # wall-clock time of the alarm


def test_services_without_an_error_metric_get_no_monitor() -> None:
    assert DriftMonitor.for_service("tally") is None


def test_settings_from_env() -> None:
    env = {"DRIFTLINE_DRIFT_ACTION": "ctr=faster, forecast=warm-restart", "DRIFTLINE_DRIFT_HOLD": "7"}
    assert DriftSettings.from_env("ctr", env) == DriftSettings(action="faster", hold=7)
    assert DriftSettings.from_env("forecast", env).action == "warm-restart"
    assert DriftSettings.from_env("rank", env).action == "alarm"
    assert DriftSettings.from_env("rank", {"DRIFTLINE_DRIFT_ACTION": "faster"}).action == "faster"


def test_forecast_has_its_own_detector_defaults_and_the_environment_overrides_them() -> None:
    forecast = DriftSettings.from_env("forecast", {})
    assert (forecast.delta, forecast.threshold) == (0.2, 3.0), "see SERVICE_DEFAULTS"
    assert DriftSettings.from_env("ctr", {}) == DriftSettings() == DriftSettings.from_env("rank", {})
    override = DriftSettings.from_env("forecast", {"DRIFTLINE_DRIFT_THRESHOLD": "0.5"})
    assert (override.delta, override.threshold) == (0.2, 0.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DRIFTLINE_DRIFT_ACTION": "ctr=panic"}, "drift action must be one of"),
        ({"DRIFTLINE_DRIFT_ACTION": "ctr"}, "drift action must be one of"),
        ({"DRIFTLINE_DRIFT_ACTION": "ctr=faster,rank"}, "expected service=action"),
        ({"DRIFTLINE_DRIFT_THRESHOLD": "high"}, "DRIFTLINE_DRIFT_THRESHOLD='high'"),
        ({"DRIFTLINE_DRIFT_WARMUP": "0"}, "warmup >= 1"),
    ],
)
def test_bad_settings_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftSettings.from_env("ctr", env)

"""Drift alarms on a service's online error stream: river's Page-Hinkley test, checkpointable.

Each service's progressive (test-then-train) error, one value per micro-batch, goes through a
one-sided (``mode="up"``) Page-Hinkley test: an alarm means the error rose and stayed up, the
signature of a changed world or a broken model. Page-Hinkley rather than ADWIN because its whole
state is a few numbers that a checkpoint holds as plain data (ADWIN's is a compiled bucket
structure), and because only a rise of the error matters here, which ADWIN does not tell apart.

Errors of different services live on different scales (an MSE, a logloss), so each value is
divided by the mean of the first ``warmup`` values after the start or the last alarm: ``delta``
and ``threshold`` are then fractions of the service's normal error, one setting for all. After an
alarm the new level becomes the baseline, so one lasting shift raises one alarm, not a stream.

``river`` costs about 1.5 s to import, so it is imported with the first detector, not with this
module. Settings (environment, per service where it says so) are read by :meth:`DriftSettings.from_env`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

#: The error each service's drift detector watches: (metric in the batch metrics, higher is better).
#: A higher-is-better metric m is watched as 1 - m.
ERROR_METRICS: dict[str, tuple[str, bool]] = {
    "forecast": ("mse", False),
    "ctr": ("logloss", False),
    "rank": ("ndcg@10", True),
}
ACTIONS = ("alarm", "faster", "warm-restart")
#: Detector settings of a service whose error stream the defaults do not fit. Forecast: on a clean
#: ETTh2 replay (real; 4,000 windows, 8 observations per batch, DLinear) the defaults raised 15
#: alarms on outlier stretches, and one just before a synthetic lasting x2.5 scale (window 2,000)
#: set the new baseline on it, so the scale alarmed 1,149 windows late; delta 0.2 and threshold 3
#: raised 3 (two outlier stretches alarm even at threshold 8) and the scale alarmed 13 windows in, a
#: x1.5 scale 29 windows in (missed by delta 0.3 / threshold 8 and delta 0.5 / threshold 5).
SERVICE_DEFAULTS: dict[str, dict[str, float]] = {"forecast": {"delta": 0.2, "threshold": 3.0}}
DETECTOR = "page-hinkley"


@runtime_checkable
class Adapts(Protocol):
    """A service that hears its drift alarms: ``alarm`` only informs it (CTR holds a probation on
    it), ``faster`` and ``warm-restart`` ask it to adapt."""

    def on_drift(self, action: str) -> None:
        """React to an alarm as ``action`` says; called under the service lock, replayed alike."""


@dataclass(frozen=True)
class DriftSettings:
    """How a service's detector is tuned and what an alarm does."""

    action: str = "alarm"
    #: Page-Hinkley's magnitude of tolerated rise, a fraction of the baseline error.
    delta: float = 0.05
    #: Page-Hinkley's lambda: cumulative rise (in baselines) that raises the alarm.
    threshold: float = 1.0
    #: Batches that set the baseline (and Page-Hinkley's minimum before it may alarm).
    warmup: int = 10
    #: Batches after an alarm during which the service counts as ``in_alarm``.
    hold: int = 20

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"drift action must be one of {', '.join(ACTIONS)}, got {self.action!r}")
        if self.delta < 0 or self.threshold <= 0 or self.warmup < 1 or self.hold < 0:
            raise ValueError(
                "drift settings need delta >= 0, threshold > 0, warmup >= 1 and hold >= 0, got "
                f"delta={self.delta}, threshold={self.threshold}, warmup={self.warmup}, hold={self.hold}"
            )

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> DriftSettings:
        """``DRIFTLINE_DRIFT_ACTION`` (``ctr=faster,forecast=alarm`` or one action for all) and
        ``DRIFTLINE_DRIFT_{DELTA,THRESHOLD,WARMUP,HOLD}`` (for every service, over its
        :data:`SERVICE_DEFAULTS`); a bad value raises ``ValueError``."""
        env = os.environ if env is None else env
        action = _action_for(service, env.get("DRIFTLINE_DRIFT_ACTION", ""))
        settings = cls(action=action, **SERVICE_DEFAULTS.get(service, {}))
        for name, kind in (("delta", float), ("threshold", float), ("warmup", int), ("hold", int)):
            text = env.get(f"DRIFTLINE_DRIFT_{name.upper()}")
            if text:
                try:
                    settings = replace(settings, **{name: kind(text)})
                except ValueError as exc:
                    raise ValueError(f"DRIFTLINE_DRIFT_{name.upper()}={text!r}: {exc}") from None
        return settings


def _action_for(service: str, text: str) -> str:
    """The action ``DRIFTLINE_DRIFT_ACTION`` names for ``service`` (``alarm`` when it names none)."""
    text = text.strip()
    if not text:
        return "alarm"
    if "=" not in text:
        return text
    actions = {}
    for item in text.split(","):
        name, _, action = item.partition("=")
        if not action:
            raise ValueError(f"DRIFTLINE_DRIFT_ACTION: expected service=action items, got {item!r}")
        actions[name.strip()] = action.strip()
    return actions.get(service, "alarm")


class DriftMonitor:
    """One service's detector, alarm count and alarm state; see the module docstring."""

    def __init__(
        self,
        service: str,
        metric: str,
        higher_is_better: bool = False,
        settings: DriftSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.settings = settings or DriftSettings()
        self.clock = clock
        self.alarms = 0
        self.last_alarm_ts: float | None = None
        self.observed = 0
        self._since_alarm: int | None = None
        self._warm: list[float] = []
        self._baseline: float | None = None
        self._detector: Any = None

    @classmethod
    def for_service(cls, service: str, settings: DriftSettings | None = None) -> DriftMonitor | None:
        """The monitor of a known service (None for one without an error metric, e.g. tally)."""
        if service not in ERROR_METRICS:
            return None
        metric, higher_is_better = ERROR_METRICS[service]
        return cls(service, metric, higher_is_better, settings or DriftSettings.from_env(service))

    @property
    def in_alarm(self) -> bool:
        return self._since_alarm is not None and self._since_alarm < self.settings.hold

    def observe(self, metrics: Mapping[str, float]) -> bool:
        """Feed one batch's metrics; True when this batch raised a new alarm.

        A batch without the metric, or with a value that is not finite, is skipped.
        """
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        error = 1.0 - value if self.higher_is_better else float(value)
        self.observed += 1
        if self._since_alarm is not None:
            self._since_alarm += 1
        if self._baseline is None:
            self._warm.append(error)
            if len(self._warm) < self.settings.warmup:
                return False
            self._baseline = max(sum(self._warm) / len(self._warm), 1e-12)
            self._warm = []
        detector = self._detector_now()
        detector.update(error / self._baseline)
        if not detector.drift_detected:
            return False
        self.alarms += 1
        self.last_alarm_ts = self.clock()
        self._since_alarm = 0
        self._baseline, self._detector = None, None  # the new level is measured afresh
        return True

    def _detector_now(self) -> Any:
        if self._detector is None:
            PageHinkley = detector_class()
            s = self.settings
            self._detector = PageHinkley(
                min_instances=s.warmup, delta=s.delta, threshold=s.threshold, alpha=1.0, mode="up"
            )
        return self._detector

    def view(self) -> dict[str, Any]:
        """What ``/health`` shows under ``drift``."""
        return {
            "detector": DETECTOR,
            "metric": self.metric,
            "action": self.settings.action,
            "alarms": self.alarms,
            "last_alarm_ts": self.last_alarm_ts,
            "in_alarm": self.in_alarm,
        }

    # -- state: plain data, so that a checkpoint holds it without pickling river objects --------
    def state_dict(self) -> dict[str, Any]:
        detector = self._detector
        return {
            "alarms": self.alarms,
            "last_alarm_ts": self.last_alarm_ts,
            "observed": self.observed,
            "since_alarm": self._since_alarm,
            "warm": list(self._warm),
            "baseline": self._baseline,
            "detector": None if detector is None else _page_hinkley_state(detector),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alarms = int(state["alarms"])
        self.last_alarm_ts = state["last_alarm_ts"]
        self.observed = int(state["observed"])
        self._since_alarm = state["since_alarm"]
        self._warm = [float(v) for v in state["warm"]]
        self._baseline = state["baseline"]
        self._detector = None
        if state["detector"] is not None:
            _load_page_hinkley(self._detector_now(), state["detector"])


_PH_FIELDS = ("_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease", "_drift_detected")


def detector_class() -> type:
    """river's Page-Hinkley test, imported on first call (~1.5 s, scipy included): a runner starts
    it in a thread at start-up (``streams.runner``) so no batch pays for it."""
    from river.drift import PageHinkley

    return PageHinkley


def _page_hinkley_state(detector: Any) -> dict[str, Any]:
    """river's PageHinkley (0.26) state as numbers: its running sums and its mean's count and value."""
    mean = detector._x_mean
    return {**{name: getattr(detector, name) for name in _PH_FIELDS}, "n": mean.n, "mean": mean._mean}


def _load_page_hinkley(detector: Any, state: Mapping[str, Any]) -> None:
    for name in _PH_FIELDS:
        setattr(detector, name, state[name])
    detector._x_mean.n, detector._x_mean._mean = state["n"], state["mean"]

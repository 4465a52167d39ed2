"""The forecast promotion gate: forecasts come from a version that passed it, while the learner trains on.

The online learner never publishes directly once a version serves. Every ``candidate_every``
learned windows it is frozen (a copy) into a candidate, at a micro-batch boundary so that the
candidate's offsets are exactly what it learned from. The next ``gate_windows`` training pairs are
the held-back slice: neither the candidate (frozen before them) nor the serving version (older
still) has trained on them. Both forecast each pair's look-back with ``predict``, as serving it
would have, before the learner trains on it; once the slice is complete, the candidate serves only
if its MSE passes :meth:`streams.lineage.GateEvidence.passes` against the serving version's. Every
decision goes into the :class:`~streams.lineage.Lineage` with both MSEs, the margin, the slice's
sample count and offsets.

Until a first candidate passes (nothing to compare it with, so it always does), the learner's own
forecasts are published, as without the gate. Only the gate's slice costs extra forward passes (one
per frozen version, ``gate_windows`` pairs per candidate); serving forecasts replace the learner's.
Time is counted in windows, not seconds, and the gate's state is checkpointed, so a replay decides alike.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

from forecasters.batch import WindowBatch
from forecasters.learner import Forecaster, forecast_errors
from streams.lineage import GateEvidence, Lineage
from streams.option_config import OptionConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionConfig(OptionConfig):
    """``--option forecast.KEY=VALUE`` settings of the gate."""

    #: Learned windows between two candidates (counted from one freeze to the next). On ETTh2 (one
    #: series, H=24) 256 served forecasts with 1.7% less MSE than the learner itself, 512 with 7.7%
    #: more: a frozen version stops adapting (docs/forecasters.md, "Promotion gate").
    candidate_every: int = 256
    #: Training pairs in each candidate's held-back slice (both versions forecast each of them).
    gate_windows: int = 32
    #: A candidate may have up to this much (relative) more MSE than serving and still serve.
    promotion_margin: float = 0.02

    def __post_init__(self) -> None:
        for name in ("candidate_every", "gate_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"forecast {name} must be an integer >= 1, got {value!r}")
        margin = self.promotion_margin
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin >= 0:
            raise ValueError(f"forecast promotion_margin must be a number >= 0, got {margin!r}")


@dataclass
class Frozen:
    """A frozen copy of the learner: it only forecasts."""

    version: int
    learner: Forecaster


@dataclass
class Trial:
    """A candidate being scored on its held-back slice; the totals sum each scored window's MSE."""

    candidate: Frozen
    trained_at: float
    #: What the candidate learned from: the offsets of the last micro-batch before it was frozen.
    offsets: dict[str, int]
    windows: int = 0
    candidate_total: float = 0.0
    serving_total: float = 0.0


class ForecastGate:
    """Candidates, their held-back scores, the serving version and the lineage of one forecast service."""

    def __init__(self, start_version: int, config: PromotionConfig | None = None) -> None:
        self.config = config or PromotionConfig()
        self.lineage = Lineage()
        self.last_version = start_version
        self.serving: Frozen | None = None
        self.trial: Trial | None = None
        self.since_candidate = 0
        #: Offsets of everything learned so far (the micro-batch in progress excluded).
        self.learned_offsets: dict[str, int] = {}

    def forecaster(self, learner: Forecaster) -> Forecaster:
        """What forecasts are published from: the serving version, or ``learner`` before any serves."""
        return learner if self.serving is None else self.serving.learner

    def version(self, start_version: int) -> int:
        return start_version if self.serving is None else self.serving.version

    # -- one micro-batch -------------------------------------------------------------------------
    def before_batch(self, learner: Forecaster) -> None:
        """Freeze ``learner`` into a candidate when one is due (before it learns this batch)."""
        if self.trial is None and self.since_candidate >= self.config.candidate_every:
            self.last_version += 1
            candidate = Frozen(self.last_version, copy.deepcopy(learner))
            self.trial = Trial(candidate, time.time(), dict(self.learned_offsets))
            self.since_candidate = 0

    def score(self, batch: WindowBatch) -> None:
        """Both versions forecast the pairs of ``batch`` the slice still needs (before the learner
        trains on them)."""
        trial = self.trial
        needed = 0 if trial is None else self.config.gate_windows - trial.windows
        if trial is None or needed <= 0:
            return
        held_back = _first_rows(batch, needed)
        rows = len(held_back.x)
        trial.candidate_total += _mse(trial.candidate.learner, held_back) * rows
        if self.serving is not None:
            trial.serving_total += _mse(self.serving.learner, held_back) * rows
        trial.windows += rows

    def after_batch(self, learned: int, offsets: dict[str, int]) -> dict[str, float]:
        """The batch's ``learned`` windows (up to ``offsets``) are in; decide a complete trial.
        Returns the decision as batch metrics (none without one)."""
        self.since_candidate += learned
        decided: dict[str, float] = {}
        trial = self.trial
        if trial is not None and trial.windows >= self.config.gate_windows:
            decided = self._decide(trial, offsets)
            self.trial = None
        self.learned_offsets = dict(offsets)
        return decided

    def _decide(self, trial: Trial, offsets: dict[str, int]) -> dict[str, float]:
        serving = self.serving
        evidence = GateEvidence(
            metric="mse",
            candidate=trial.candidate_total / trial.windows,
            serving=None if serving is None else trial.serving_total / trial.windows,
            serving_version=None if serving is None else serving.version,
            margin=self.config.promotion_margin,
            window={"samples": trial.windows, "after": trial.offsets, "to": dict(offsets)},
        )
        version = trial.candidate.version
        promoted = self.lineage.gate(version, trial.trained_at, trial.offsets, evidence)
        if promoted:
            self.serving = trial.candidate
        (log.info if promoted else log.warning)(
            "forecast: v%d %s: %s", version, "promoted" if promoted else "rejected", evidence.reason()
        )
        return {"gate_version": float(version), "gate_promoted": float(promoted)}

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        trial = self.trial
        return {
            "lineage": self.lineage.state_dict(),
            "last_version": self.last_version,
            "since_candidate": self.since_candidate,
            "learned_offsets": dict(self.learned_offsets),
            "serving": None if self.serving is None else _frozen_state(self.serving),
            "trial": None
            if trial is None
            else {
                "candidate": _frozen_state(trial.candidate),
                "trained_at": trial.trained_at,
                "offsets": dict(trial.offsets),
                "windows": trial.windows,
                "candidate_total": trial.candidate_total,
                "serving_total": trial.serving_total,
            },
        }

    def load_state_dict(self, state: dict[str, Any], learner: Forecaster) -> None:
        """Restore from :meth:`state_dict`; frozen versions are loaded into copies of ``learner``."""
        self.lineage.load_state_dict(state["lineage"])
        self.last_version = int(state["last_version"])
        self.since_candidate = int(state["since_candidate"])
        self.learned_offsets = dict(state["learned_offsets"])
        self.serving = None if state["serving"] is None else _thaw(state["serving"], learner)
        trial = state["trial"]
        self.trial = None
        if trial is not None:
            self.trial = Trial(
                _thaw(trial["candidate"], learner),
                float(trial["trained_at"]),
                dict(trial["offsets"]),
                int(trial["windows"]),
                float(trial["candidate_total"]),
                float(trial["serving_total"]),
            )


def _frozen_state(frozen: Frozen) -> dict[str, Any]:
    return {"version": frozen.version, "learner": frozen.learner.state_dict()}


def _thaw(state: dict[str, Any], template: Forecaster) -> Frozen:
    learner = copy.deepcopy(template)
    learner.load_state_dict(state["learner"])
    return Frozen(int(state["version"]), learner)


def _mse(learner: Forecaster, batch: WindowBatch) -> float:
    prediction = learner.predict(batch)
    return forecast_errors(prediction, batch.target.to(prediction.device))["mse"]


def _first_rows(batch: WindowBatch, rows: int) -> WindowBatch:
    """``batch`` cut to its first ``rows`` rows (all of it when it has no more)."""
    if rows >= len(batch.x):
        return batch
    keys = None if batch.keys is None else batch.keys[:rows]
    marks = None if batch.marks is None else batch.marks[:rows]
    return WindowBatch(batch.x[:rows], batch.target[:rows], marks, keys, batch.sequential)

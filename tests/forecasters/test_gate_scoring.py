"""The gate scores a micro-batch's rounds with one forecast per frozen version (synthetic sine, in
process): the same slice totals and probation steps as scoring round by round, in a third of the
forward passes of a 3-round batch (issue 9, freshness: a lagging worker's batch paid one per round)."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from forecasters.batch import WindowBatch
from forecasters.learner import Forecaster, forecast_errors
from forecasters.promotion import ForecastGate, Frozen, PromotionConfig, Trial
from forecasters.zoo import ForecasterSpec, build_forecaster
from streams.probation import Probation

from .conftest import sine_values

SPEC = ForecasterSpec(kind="dlinear", seq_len=8, horizon=3, channels=2, lr=0.01)
VALUES = sine_values(80, 2)


def pairs(first: int, count: int) -> WindowBatch:
    """``count`` consecutive training pairs (look-back 8 -> the next 3 rows) from row ``first``."""
    starts = range(first, first + count)
    x = torch.from_numpy(np.stack([VALUES[s : s + 8] for s in starts]))
    y = torch.from_numpy(np.stack([VALUES[s + 8 : s + 11] for s in starts]))
    return WindowBatch(x, y, keys=("a",) * count, sequential=True)


def trained(learner: Forecaster, steps: int) -> Forecaster:
    """A copy of ``learner`` after ``steps`` learn calls: versions that forecast differently."""
    copied = copy.deepcopy(learner)
    for step in range(steps):
        copied.learn(pairs(step * 4, 4))
    return copied


def counted(frozen: Frozen, calls: Counter[int]) -> Frozen:
    """``frozen`` whose forecasts are counted in ``calls`` under its version."""
    predict = frozen.learner.predict

    def counting(batch: WindowBatch) -> torch.Tensor:
        calls[frozen.version] += 1
        return predict(batch)

    frozen.learner.predict = counting  # type: ignore[method-assign]
    return frozen


def mse(learner: Forecaster, batch: WindowBatch) -> float:
    return forecast_errors(learner.predict(batch), batch.target)["mse"]


def test_a_batch_of_rounds_scores_like_round_by_round_with_one_forecast_per_version() -> None:
    start = build_forecaster(SPEC)
    predecessor, serving, candidate = (trained(start, steps) for steps in (2, 5, 9))
    calls: Counter[int] = Counter()
    gate = ForecastGate(2, PromotionConfig(gate_windows=5))
    kept = [counted(Frozen(1, predecessor), calls), counted(Frozen(2, serving), calls)]
    gate.kept, gate.serving = kept, kept[1]
    gate.trial = Trial(counted(Frozen(3, candidate), calls), 0.0, {})
    gate.probation = Probation(version=2, predecessor=1, since=0.0, baseline=1.0)
    rounds = [pairs(30, 4), pairs(34, 4), pairs(38, 2)]  # a lagging worker's 3 rounds

    gate.score(rounds)

    assert calls == {1: 1, 2: 1, 3: 1}, "one forecast per frozen version for the whole micro-batch"
    held_back = [pairs(30, 4), pairs(34, 1)]  # the first 5 pairs, across the round boundary
    trial, probation = gate.trial, gate.probation
    assert trial is not None and probation is not None and trial.windows == 5
    for total, version in ((trial.candidate_total, candidate), (trial.serving_total, serving)):
        assert total == pytest.approx(sum(mse(version, b) * len(b.x) for b in held_back), rel=1e-5)
    expected = [[len(r.x), mse(serving, r), mse(predecessor, r)] for r in rounds]  # one step per round
    assert probation.evaluated == 10
    assert probation.window == [pytest.approx(step, rel=1e-5) for step in expected]


def test_without_a_trial_or_a_probation_nothing_is_forecast() -> None:
    calls: Counter[int] = Counter()
    gate = ForecastGate(1, PromotionConfig(gate_windows=5))
    gate.kept = [counted(Frozen(1, build_forecaster(SPEC)), calls)]
    gate.serving = gate.kept[0]
    gate.score([pairs(0, 4), pairs(4, 4)])
    assert calls == {}

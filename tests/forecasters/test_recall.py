"""The paper-protocol correction from the latest revealed residual (forecasters/recall.py), synthetic data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from forecasters.batch import WindowBatch
from forecasters.data import Windows
from forecasters.learner import Forecaster
from forecasters.onenet import OneNet
from forecasters.training import validation_mse
from forecasters.zoo import ForecasterSpec, build_forecaster
from tests.forecasters.conftest import sine_values
from tests.forecasters.test_models import frozen_onenet


def frozen(recall: bool) -> OneNet:
    """OneNet whose networks never move (lr 0), so only the cheap online parts can adapt."""
    return frozen_onenet(gain=False, recall=recall)


def trend_windows() -> Windows:
    """Sines on a steady trend, which the frozen branches (each window relative to its last value) miss by
    about the same amount at each lead in every window: an error that persists from window to window."""
    values = sine_values(200, 3) + 0.2 * np.arange(200, dtype=np.float32)[:, None]
    return Windows(values, None, seq_len=32, horizon=4)


def paper_stream_mse(learner: Forecaster, windows: Windows, origins: np.ndarray) -> float:
    """Mean pre-update MSE of learning each window right after forecasting it (the paper protocol)."""
    scores = [learner.learn(windows.batch(origins[i : i + 1]))["mse"] for i in range(len(origins))]
    return float(np.mean(scores))


def test_recall_carries_the_revealed_residual_to_the_next_forecast() -> None:
    """Removing the correction (recall=False) leaves the frozen model's persistent error; with it each
    window is corrected by the one revealed just before, as under the paper protocol."""
    windows = trend_windows()
    origins = windows.origins(0, 200)
    after = origins[60:120]
    plain, recalled = frozen(False), frozen(True)
    for model in (plain, recalled):
        paper_stream_mse(model, windows, origins[:60])
    assert paper_stream_mse(recalled, windows, after) < 0.3 * paper_stream_mse(plain, windows, after)
    assert recalled.recall is not None and float(recalled.recall.coefficient().mean()) > 0.5


def test_recall_predict_matches_the_score_learn_gives() -> None:
    windows = trend_windows()
    origins = windows.origins(0, 200)
    learner = frozen(True)
    paper_stream_mse(learner, windows, origins[:30])
    nxt = windows.batch(origins[30:31])
    expected = float((learner.predict(nxt) - nxt.target).square().mean())
    assert learner.learn(nxt)["mse"] == pytest.approx(expected, rel=1e-5)


def test_unrelated_windows_neither_use_nor_change_the_recall_state() -> None:
    """Warm-up and validation batches (several rows, no series keys) have no revealed predecessor."""
    windows = trend_windows()
    origins = windows.origins(0, 200)
    learner = frozen(True)
    paper_stream_mse(learner, windows, origins[:20])
    assert learner.recall is not None
    before = copy.deepcopy(learner.recall.state_dict())
    learner.learn(windows.batch(origins[40:56]))
    state = learner.recall.state_dict()
    assert torch.equal(state["cross"], before["cross"]) and torch.equal(state["power"], before["power"])
    assert np.array_equal(state["last"][""], before["last"][""])
    unrelated, without = windows.batch(origins[100:110]), copy.deepcopy(learner)
    without.recall = None
    assert torch.equal(learner.predict(unrelated), without.predict(unrelated))


def test_recall_chunk_advances_as_per_step_calls() -> None:
    windows = trend_windows()
    origins = windows.origins(0, 200)[90:96]
    pairs = windows.batch(origins)
    keys = ("a", "b", "a", "b", "a", "b")  # three consecutive steps of two series
    per_step, chunked = frozen(True), frozen(True)
    scores = []
    for step in range(3):
        rows = [2 * step, 2 * step + 1]
        scores.append(per_step.learn(WindowBatch(pairs.x[rows], pairs.target[rows], keys=keys[:2]))["mse"])
    metrics = chunked.learn(WindowBatch(pairs.x, pairs.target, keys=keys, sequential=True))
    assert metrics["mse"] == pytest.approx(np.mean(scores), rel=1e-5)
    assert per_step.recall is not None and chunked.recall is not None
    assert torch.allclose(chunked.recall.coefficient(), per_step.recall.coefficient(), atol=1e-6)
    for key in ("a", "b"):
        assert np.allclose(chunked.recall.last[key], per_step.recall.last[key], atol=1e-6)


def test_recall_state_round_trips(sine_windows: Windows) -> None:
    options = ForecasterSpec(seq_len=32, horizon=4, channels=3, recall=True)
    origins = sine_windows.origins(0, 400)
    learner = build_forecaster(options)
    paper_stream_mse(learner, sine_windows, origins[:20])
    twin = build_forecaster(options)
    twin.load_state_dict(copy.deepcopy(learner.state_dict()))
    probe = sine_windows.batch(origins[20:21])
    assert torch.allclose(learner.predict(probe), twin.predict(probe), atol=1e-6)
    assert validation_mse(learner, sine_windows, origins[100:110]) == pytest.approx(
        validation_mse(twin, sine_windows, origins[100:110])
    )


def test_onenet_paper_is_onenet_with_recall_and_the_default_has_none() -> None:
    paper = build_forecaster(ForecasterSpec(kind="onenet-paper", seq_len=32, horizon=4, channels=3))
    default = build_forecaster(ForecasterSpec(kind="onenet", seq_len=32, horizon=4, channels=3))
    assert isinstance(paper, OneNet) and isinstance(default, OneNet)
    assert paper.recall is not None and default.recall is None

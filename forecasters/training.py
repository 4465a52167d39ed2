"""Offline warm-up: mini-batch epochs of ``learn`` with early stopping on validation MSE."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from forecasters.data import Windows
from forecasters.learner import Forecaster, StatelessForecaster, forecast_errors

Progress = Callable[[int, float, float], None]


@dataclass(frozen=True)
class FitReport:
    """Epochs run, the best validation MSE and the epoch it came from."""

    epochs: int
    best_val_mse: float
    best_epoch: int


def validation_mse(
    learner: Forecaster, windows: Windows, origins: np.ndarray, batch_size: int = 256
) -> float:
    """Mean squared error of ``learner.predict`` over ``origins`` (the model does not change)."""
    total, count = 0.0, 0
    for batch in windows.batches(origins, batch_size):
        total += forecast_errors(learner.predict(batch), batch.target)["mse"] * len(batch.x)
        count += len(batch.x)
    return total / max(count, 1)


def fit(
    learner: Forecaster,
    windows: Windows,
    train: np.ndarray,
    val: np.ndarray,
    epochs: int = 15,
    batch_size: int = 32,
    patience: int = 3,
    seed: int = 0,
    progress: Progress | None = None,
) -> FitReport:
    """Train on shuffled ``train`` origins; keep the state with the best validation MSE (OneNet's warm-up)."""
    if isinstance(learner, StatelessForecaster) or epochs < 1:
        return FitReport(0, validation_mse(learner, windows, val), 0)
    rng = np.random.default_rng(seed)
    best, best_epoch, best_state = float("inf"), 0, learner.state_dict()
    epoch = 0
    for epoch in range(1, epochs + 1):
        losses = [learner.learn(batch)["loss"] for batch in windows.batches(train, batch_size, rng)]
        val_mse = validation_mse(learner, windows, val)
        if progress:
            progress(epoch, float(np.mean(losses)), val_mse)
        if val_mse < best:
            best, best_epoch, best_state = val_mse, epoch, copy.deepcopy(learner.state_dict())
        elif epoch - best_epoch >= patience:
            break
    learner.load_state_dict(best_state)
    return FitReport(epoch, best, best_epoch)

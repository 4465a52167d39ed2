"""Offline warm-up: mini-batch epochs of ``learn`` with early stopping on validation MSE."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from forecasters.data import Windows
from forecasters.learner import Forecaster, StatelessForecaster, forecast_errors
from forecasters.onenet import OneNet

Progress = Callable[[int, float, float], None]
#: Online learning rate as a share of the warm-up's. OneNet under delayed labels on ETTh2 (first 1,000
#: steps, 3 seeds, 1 warm-up epoch): H=48 MSE .758 +- .006 at 0.1 against .897 +- .144 at 0.25
#: (docs/forecasters.md, "Delayed labels: what made it stable").
ONLINE_LR_SCALE = 0.1


@dataclass(frozen=True)
class FitReport:
    """Epochs run, the best validation MSE and the epoch it came from, and the gain prior the
    validation split chose (None: the model has none to choose)."""

    epochs: int
    best_val_mse: float
    best_epoch: int
    gain_prior: float | None = None


def validation_mse(
    learner: Forecaster, windows: Windows, origins: np.ndarray, batch_size: int = 256
) -> float:
    """Mean squared error of ``learner.predict`` over ``origins`` (the model does not change)."""
    total, count = 0.0, 0
    for batch in windows.batches(origins, batch_size):
        prediction = learner.predict(batch)
        total += forecast_errors(prediction, batch.target.to(prediction.device))["mse"] * len(batch.x)
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
    online_lr_scale: float = ONLINE_LR_SCALE,
) -> FitReport:
    """Train on shuffled ``train`` origins; keep the state with the best validation MSE (OneNet's warm-up).

    The kept state's learning rates are then multiplied by ``online_lr_scale`` for the online phase
    (they stay in its optimizer state, so a pretrained checkpoint carries them to the service), and a
    OneNet without a fixed gain prior picks one on ``val`` (kept in its state, so in the checkpoint too).
    """
    if not 0 < online_lr_scale <= 1:
        raise ValueError(f"online_lr_scale must be in (0, 1], got {online_lr_scale}")
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
    learner.scale_lr(online_lr_scale)
    return FitReport(epoch, best, best_epoch, chosen_gain_prior(learner, windows, val))


def chosen_gain_prior(learner: Forecaster, windows: Windows, val: np.ndarray) -> float | None:
    """The gain prior of a OneNet, chosen on the ``val`` origins unless it was fixed; else None."""
    if not isinstance(learner, OneNet) or learner.gain is None:
        return None
    learner.choose_gain_prior(windows, val)
    return learner.gain.prior

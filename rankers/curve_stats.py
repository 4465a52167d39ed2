"""Comparing learning curves at equal label counts: interpolation, paired bootstrap, label savings."""

from __future__ import annotations

import numpy as np


def curve_at(points: dict[int, dict[str, float]], grid: np.ndarray, metric: str) -> np.ndarray:
    """A run's metric at label counts ``grid``, linear between measured counts, NaN outside them."""
    counts = np.array(sorted(points), dtype=np.float64)
    values = np.array([points[int(c)][metric] for c in counts])
    return np.interp(grid, counts, values, left=np.nan, right=np.nan)


def paired_gain_ci(
    ours: np.ndarray, base: np.ndarray, rng: np.random.Generator, resamples: int = 10_000
) -> tuple[float, float, float]:
    """Relative gain ``mean(ours) / mean(base) - 1`` and its paired bootstrap 95% CI (pairs resampled)."""
    ours, base = np.asarray(ours, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if ours.shape != base.shape or ours.ndim != 1 or len(ours) < 2:
        raise ValueError("need two equally long 1-D samples of at least 2 paired values")
    picks = rng.integers(0, len(ours), size=(resamples, len(ours)))
    gains = ours[picks].mean(axis=1) / base[picks].mean(axis=1) - 1.0
    low, high = np.percentile(gains, [2.5, 97.5])
    return float(ours.mean() / base.mean() - 1.0), float(low), float(high)


def labels_to_reach(grid: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    """The first label count at which ``curve`` (on ``grid``) reaches ``target``, linear between grid
    points; None when it never does within the grid."""
    for i, value in enumerate(curve):
        if np.isnan(value) or value < target:
            continue
        if i == 0 or np.isnan(curve[i - 1]):
            return float(grid[i])
        before = curve[i - 1]
        return float(grid[i - 1] + (grid[i] - grid[i - 1]) * (target - before) / (value - before))
    return None

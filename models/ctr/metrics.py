"""Progressive-validation metrics for binary clicks, in numpy (no scikit-learn dependency)."""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None when only one class is present."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def click_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """``logloss``, ``ctr``, ``samples`` and, when both classes occur, ``auc``."""
    metrics = {
        "logloss": log_loss(labels, probabilities),
        "ctr": float(np.mean(labels)),
        "samples": float(len(labels)),
    }
    auc = roc_auc(labels, probabilities)
    if auc is not None:
        metrics["auc"] = auc
    return metrics

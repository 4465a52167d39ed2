"""AUC and logloss against direct definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.ctr.metrics import click_metrics, log_loss, roc_auc


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return float(np.mean(wins))


def test_auc_equals_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounding creates many ties
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))


def test_auc_undefined_for_one_class() -> None:
    assert roc_auc(np.ones(5), np.linspace(0, 1, 5)) is None
    assert "auc" not in click_metrics(np.zeros(3), np.full(3, 0.2))


def test_log_loss_definition_and_clipping() -> None:
    labels = np.array([1, 0, 1])
    probs = np.array([0.9, 0.2, 0.6])
    expected = -np.mean(np.log([0.9, 0.8, 0.6]))
    assert log_loss(labels, probs) == pytest.approx(expected)
    assert np.isfinite(log_loss(np.array([1]), np.array([0.0])))

from __future__ import annotations

import math

import numpy as np
import pytest

from rankers.data import QueryBatch
from rankers.metrics import mean_metrics, query_dcg, query_ndcg


def test_dcg_uses_exponential_gain_and_log_discount() -> None:
    grades = np.array([0, 2, 1])
    scores = np.array([0.1, 0.9, 0.5])  # ranking: grade 2, grade 1, grade 0
    assert query_dcg(scores, grades, 4) == pytest.approx(3 / math.log2(2) + 1 / math.log2(3))
    assert query_dcg(scores, grades, 1) == pytest.approx(3.0)


def test_ndcg_is_one_for_ideal_order_and_none_without_relevant_docs() -> None:
    grades = np.array([3, 0, 1])
    assert query_ndcg(np.array([3.0, 1.0, 2.0]), grades, 10) == pytest.approx(1.0)
    assert query_ndcg(np.array([1.0, 3.0, 2.0]), grades, 10) < 1.0
    assert query_ndcg(np.array([1.0, 2.0]), np.array([0, 0]), 10) is None


def test_ties_keep_document_order() -> None:
    assert query_dcg(np.zeros(2), np.array([0, 4]), 1) == 0.0


def test_mean_metrics_skips_queries_without_relevant_docs_for_ndcg_only() -> None:
    batch = QueryBatch.from_queries(["a", "b"], [np.zeros((2, 1)), np.zeros((2, 1))], [[1, 0], [0, 0]])
    out = mean_metrics(batch, np.array([1.0, 0.0, 1.0, 0.0]))
    assert out["ndcg@10"] == pytest.approx(1.0)
    assert out["dcg@4"] == pytest.approx(0.5)

"""Graded ranking metrics: DCG@k and NDCG@k with exponential gain ``2**grade - 1``.

DCG@k = sum over the top-k positions i (1-based) of ``(2**g_i - 1) / log2(i + 1)``, the form used by
MSLR-WEB and LightGBM's ``ndcg``. Ties in the scores are broken by document order, so a metric never
depends on an unstable sort.
"""

from __future__ import annotations

import numpy as np

from rankers.data import QueryBatch


def dcg_at(grades_in_rank_order: np.ndarray, k: int) -> float:
    """DCG of the first ``k`` grades of an already ranked list."""
    top = np.asarray(grades_in_rank_order[:k], dtype=np.float64)
    discounts = np.log2(np.arange(2, len(top) + 2))
    return float(np.sum((2.0**top - 1.0) / discounts))


def ranked_grades(scores: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """Grades ordered by descending score (stable: equal scores keep document order)."""
    return grades[np.argsort(-scores, kind="stable")]


def query_dcg(scores: np.ndarray, grades: np.ndarray, k: int) -> float:
    return dcg_at(ranked_grades(scores, grades), k)


def query_ndcg(scores: np.ndarray, grades: np.ndarray, k: int) -> float | None:
    """NDCG@k of one query; None when the query has no relevant document (ideal DCG is 0)."""
    ideal = dcg_at(np.sort(grades)[::-1], k)
    if ideal == 0.0:
        return None
    return query_dcg(scores, grades, k) / ideal


def mean_metrics(batch: QueryBatch, scores: np.ndarray, ndcg_k: int = 10, dcg_k: int = 4) -> dict[str, float]:
    """Mean NDCG@ndcg_k (over queries with a relevant document) and mean DCG@dcg_k (over all)."""
    if batch.grades is None:
        raise ValueError("metrics need a labeled batch")
    ndcgs, dcgs = [], []
    for s, g in zip(batch.split_scores(scores), batch.split_scores(batch.grades), strict=True):
        value = query_ndcg(s, g, ndcg_k)
        if value is not None:
            ndcgs.append(value)
        dcgs.append(query_dcg(s, g, dcg_k))
    return {
        f"ndcg@{ndcg_k}": float(np.mean(ndcgs)) if ndcgs else float("nan"),
        f"dcg@{dcg_k}": float(np.mean(dcgs)),
    }

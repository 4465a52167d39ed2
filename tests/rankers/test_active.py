from __future__ import annotations

import numpy as np
import pytest

from rankers.active import active_curve, split_queries
from rankers.lambdamart import LambdaMARTRanker
from rankers.selectors import make_selector

from .conftest import synthetic_queries


def test_split_is_a_partition_with_a_test_share() -> None:
    pool, test = split_queries(10, 0.3, np.random.default_rng(0))
    assert len(test) == 3 and sorted(pool + test) == list(range(10))


def test_active_curve_labels_up_to_the_budget_and_evaluates_every_round() -> None:
    pool, test = synthetic_queries(14, seed=3), synthetic_queries(5, seed=4)
    selector = make_selector("re+pv")

    def make_ranker() -> LambdaMARTRanker:
        return LambdaMARTRanker(rounds=15, params={"min_data_in_leaf": 3})

    curve = active_curve(
        pool, test, selector, make_ranker, seed_queries=2, step=3, budget=10, rng=np.random.default_rng(0)
    )
    assert sorted(curve.points) == [2, 5, 8, 10]
    assert curve.queries_scored == 12 + 9 + 6 and curve.queries_per_s > 0
    assert all(0.8 < p["ndcg@10"] <= 1.0 for p in curve.points.values())  # learned: chance is ~0.5
    with pytest.raises(ValueError, match="budget"):
        active_curve(
            pool,
            test,
            selector,
            LambdaMARTRanker,
            seed_queries=2,
            step=1,
            budget=99,
            rng=np.random.default_rng(0),
        )

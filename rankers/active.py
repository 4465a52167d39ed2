"""Pool-based active learning-to-rank, simulated on a fully labeled set (labels hidden until chosen).

The protocol behind ``bench/rank_active.py``: a few seed queries are labeled one at a time (so the
committee has several checkpoints before the first selection); then each round the selector scores
every unlabeled pool query with the current committee, the ``step`` best are "annotated" (their true
grades revealed) and the ranker learns them, producing the next checkpoint. After every round the
serving model is evaluated on held-out queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rankers.data import QueryBatch
from rankers.lambdamart import LambdaMARTRanker
from rankers.metrics import mean_metrics
from rankers.selectors import Selector


@dataclass
class Curve:
    """Held-out metrics after each round, keyed by the number of labeled queries, and selection cost."""

    points: dict[int, dict[str, float]] = field(default_factory=dict)
    queries_scored: int = 0
    scoring_s: float = 0.0

    @property
    def queries_per_s(self) -> float:
        return self.queries_scored / self.scoring_s if self.scoring_s > 0 else float("nan")


def split_queries(
    n_queries: int, test_fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Random (pool, test) query indices; the test share is at least one query."""
    order = rng.permutation(n_queries).tolist()
    n_test = max(1, round(n_queries * test_fraction))
    return order[n_test:], order[:n_test]


def active_curve(
    pool: QueryBatch,
    test: QueryBatch,
    selector: Selector,
    make_ranker: Callable[[], LambdaMARTRanker],
    *,
    seed_queries: int,
    step: int,
    budget: int,
    rng: np.random.Generator,
) -> Curve:
    """Run one active-learning simulation; the seed set is drawn from ``rng`` before any selection."""
    if not 0 < seed_queries <= budget <= pool.n_queries:
        raise ValueError(f"need 0 < seed_queries ({seed_queries}) <= budget ({budget}) <= pool size")
    ranker = make_ranker()
    labeled = rng.choice(pool.n_queries, seed_queries, replace=False).tolist()
    for chunk in np.array_split(np.asarray(labeled), min(ranker.committee_size, seed_queries)):
        ranker.learn(pool.select(chunk.tolist()))
    curve = Curve()
    curve.points[len(labeled)] = mean_metrics(test, ranker.predict(test))
    while len(labeled) < budget:
        chosen_set = set(labeled)
        unlabeled = [i for i in range(pool.n_queries) if i not in chosen_set]
        candidates = pool.select(unlabeled)
        started = time.perf_counter()
        committee = candidates.split_scores(ranker.committee_scores(candidates))
        picked = selector.select(committee, min(step, budget - len(labeled)), rng)
        curve.scoring_s += time.perf_counter() - started
        curve.queries_scored += candidates.n_queries
        chosen = [unlabeled[i] for i in picked]
        ranker.learn(pool.select(chosen))
        labeled.extend(chosen)
        curve.points[len(labeled)] = mean_metrics(test, ranker.predict(test))
    return curve

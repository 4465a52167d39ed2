"""Small synthetic ranking data: relevance is a known function of the first two features."""

from __future__ import annotations

import numpy as np
import pytest

from rankers.data import QueryBatch


def synthetic_queries(n_queries: int, docs: int = 20, width: int = 5, seed: int = 0) -> QueryBatch:
    rng = np.random.default_rng(seed)
    features, grades = [], []
    for _ in range(n_queries):
        x = rng.normal(size=(docs, width)).astype(np.float32)
        signal = x[:, 0] + 0.5 * x[:, 1]
        grades.append(np.clip(np.round(signal + 2), 0, 4).astype(np.int64))
        features.append(x)
    return QueryBatch.from_queries([f"q{i}" for i in range(n_queries)], features, grades)


@pytest.fixture
def queries() -> QueryBatch:
    return synthetic_queries(12)

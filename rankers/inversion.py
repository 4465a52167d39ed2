"""Synthetic label corruption for tests and benches: each query's grades turned upside down.

On MQ2008 the obvious inversion, ``2 - grade``, makes most documents relevant (most are graded 0),
so almost any ranking of an inverted query scores a high NDCG: the error the drift alarm watches
*falls*. :func:`mirror_grades` keeps each query's grades and hands them out in reverse order of
relevance instead: the least relevant documents get the highest grades, as many of each as before. A
ranker that learned the true order then does badly on it, the way a real change of what users find
relevant would look.
"""

from __future__ import annotations

import numpy as np

from rankers.data import QueryBatch


def mirror_grades(batch: QueryBatch) -> QueryBatch:
    """``batch`` with each query's grades reversed in relevance order (ties in document order)."""
    if batch.grades is None:
        raise ValueError("mirror_grades needs a labeled batch")
    grades = batch.grades.copy()
    for a, b in zip(batch.offsets[:-1], batch.offsets[1:], strict=True):
        order = np.argsort(batch.grades[a:b], kind="stable")  # least relevant first
        grades[a + order] = np.sort(batch.grades[a:b])[::-1]
    return QueryBatch(batch.features, batch.offsets, batch.query_ids, grades)

"""Overlap labeling: the consensus of several annotators' grades, and how well each agrees with others.

With ``overlap = k`` a task is labeled by k different annotators before the model learns it, from
the per-document median (the lower one for even k, so the consensus is a grade). Agreement is the
pairwise rank correlation: on every task with two or more labels, Spearman's rho (ties averaged)
between each pair of annotators' grades over the task's documents; a pair where either gave every
document the same grade has no rank order and is left out. Each annotator's figure is the mean over
the pairs they are in: near 1 agrees with the others' order, near 0 unrelated, below 0 reversed.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np


def consensus(labels: dict[str, dict[str, int]]) -> dict[str, int]:
    """Per document, the lower median of the annotators' grades."""
    docs = next(iter(labels.values()))
    return {doc: sorted(grades[doc] for grades in labels.values())[(len(labels) - 1) // 2] for doc in docs}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: list[int], b: list[int]) -> float | None:
    """Spearman's rho of two gradings of the same documents; None when either has no order."""
    x, y = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


class Agreement:
    """Per annotator: the sum and count of their pairwise rank correlations so far."""

    def __init__(self) -> None:
        self.pairs: dict[str, list[float]] = {}  # annotator -> [sum of rho, pairs]

    def add(self, labels: dict[str, dict[str, int]]) -> None:
        """Count one task's labels (annotator -> grades by doc id)."""
        docs = list(next(iter(labels.values())))
        for first, second in combinations(sorted(labels), 2):
            rho = spearman([labels[first][d] for d in docs], [labels[second][d] for d in docs])
            if rho is None:
                continue
            for annotator in (first, second):
                total = self.pairs.setdefault(annotator, [0.0, 0.0])
                total[0] += rho
                total[1] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        return {a: {"pairs": int(n), "rank_correlation": s / n} for a, (s, n) in sorted(self.pairs.items())}

    def state_dict(self) -> dict[str, Any]:
        return {"pairs": {a: list(v) for a, v in self.pairs.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairs = {a: [float(s), float(n)] for a, (s, n) in state["pairs"].items()}

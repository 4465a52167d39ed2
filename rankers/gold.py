"""Gold tasks: tasks whose grades are known, mixed into the annotators' queue to measure each of them.

A gold task's label is never learned; it is scored against the known grades, per annotator:

``exact``
    the share of the task's documents given exactly the known grade (0..1), averaged over gold tasks;
``ndcg@10``
    the NDCG@10 of the known grades when the documents are ranked by the annotator's grades (ties in
    document order, as everywhere in :mod:`rankers.metrics`), averaged over the gold tasks that have a
    relevant document. Near 1: the annotator orders documents as the truth does, even when their
    scale is shifted (all grades one lower still ranks perfectly, though ``exact`` is then 0).

:func:`gold_due` spaces the gold tasks evenly at ``gold_rate`` per ordinary query, from a count
rather than a random draw, so a replay of the same queries mixes the same gold tasks in. The known
grades come from a held-out set of graded queries (:func:`load_gold`: JSON lines ``{"query": <Query>,
"grades": {doc_id: grade}}``), used in turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from rankers.data import MAX_GRADE
from rankers.metrics import query_ndcg
from streams.schemas import Query

NDCG_K = 10


def gold_due(seen: int, rate: float) -> bool:
    """Whether a gold task follows the ``seen``-th query (1-based): the running count of gold tasks,
    ``floor(seen * rate)``, goes up by one exactly ``rate`` of the time."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError("gold_rate must lie in [0, 1]")
    if seen < 1:
        raise ValueError("seen counts queries from 1")
    return int(seen * rate) > int((seen - 1) * rate)


def load_gold(path: Path) -> list[tuple[Query, dict[str, int]]]:
    """The held-out graded queries of ``path``, in file order; ValueError naming the line that is bad."""
    gold = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            query = Query.model_validate(row["query"])
            grades = {str(d): g for d, g in row["grades"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise ValueError(f"{path}:{n}: not a gold query ({type(exc).__name__}: {exc})") from None
        docs = {d.doc_id for d in query.documents}
        if set(grades) != docs or any(type(g) is not int or not 0 <= g <= MAX_GRADE for g in grades.values()):
            raise ValueError(f"{path}:{n}: grades must be integers 0..{MAX_GRADE} for exactly its documents")
        gold.append((query, grades))
    if not gold:
        raise ValueError(f"{path}: no gold queries")
    return gold


def score_label(given: dict[str, int], truth: dict[str, int]) -> tuple[float, float | None]:
    """(exact-grade share, NDCG@10 of the truth ranked by ``given``; None without a relevant document)
    of one label; ``given`` must grade exactly the documents of ``truth``."""
    if set(given) != set(truth) or not truth:
        raise ValueError("a gold label must grade exactly the gold task's documents")
    docs = list(truth)
    mine = np.array([given[d] for d in docs], dtype=float)
    known = np.array([truth[d] for d in docs], dtype=float)
    return float(np.mean(mine == known)), query_ndcg(mine, known, NDCG_K)


class GoldScores:
    """Per annotator: gold tasks scored, the sum of exact shares, and NDCG's sum and count."""

    def __init__(self) -> None:
        self.by_annotator: dict[str, list[float]] = {}  # [tasks, exact sum, ndcg sum, ndcg count]

    def add(self, annotator: str, given: dict[str, int], truth: dict[str, int]) -> None:
        exact, ndcg = score_label(given, truth)
        tally = self.by_annotator.setdefault(annotator, [0.0, 0.0, 0.0, 0.0])
        tally[0] += 1
        tally[1] += exact
        if ndcg is not None:
            tally[2] += ndcg
            tally[3] += 1

    def summary(self) -> dict[str, dict[str, float | None]]:
        return {
            a: {"gold_tasks": int(n), "exact": e / n, f"ndcg@{NDCG_K}": s / c if c else None}
            for a, (n, e, s, c) in sorted(self.by_annotator.items())
        }

    def state_dict(self) -> dict[str, Any]:
        return {"by_annotator": {a: list(v) for a, v in self.by_annotator.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.by_annotator = {a: [float(x) for x in v] for a, v in state["by_annotator"].items()}

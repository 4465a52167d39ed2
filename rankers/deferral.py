"""A label budget that can defer: undecided queries wait in a short buffer for the next budget slot.

With the percentile threshold (the service's default) each query is kept or passed over the moment
it arrives, against scores that older committees gave earlier queries. With ``defer = N`` the last
N arrivals that did not become tasks wait here instead; whenever the (paced) budget has a slot, the
committee serving *now* scores every waiting query in one call and the best becomes the task. So
each decision compares like with like (one committee, one call: the selector's percentiles are taken
within the buffer) and picks the best of N rather than judging one query alone. A query that
waited N later arrivals is passed over for good (dropped, oldest first).

Committee scores are cached per query and model version: within one committee a waiting query is
scored once, however many slots it waits through.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from typing import Any

import numpy as np

from rankers.lambdamart import LambdaMARTRanker
from rankers.records import query_batch
from rankers.selectors import Selector
from streams.schemas import Query


class CandidateBuffer:
    """The last ``size`` undecided queries, by task id, oldest first."""

    def __init__(self, size: int) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(
                f"defer must be an integer >= 1 (queries a candidate may wait) or 0 (none), got {size!r}"
            )
        self.size = size
        self.waiting: OrderedDict[str, Query] = OrderedDict()
        self._scores: dict[str, tuple[int, np.ndarray]] = {}  # task id -> (model version, committee scores)

    def __len__(self) -> int:
        return len(self.waiting)

    def __contains__(self, key: object) -> bool:
        return key in self.waiting

    def add(self, key: str, query: Query) -> None:
        """Let ``query`` wait (a key already waiting is kept once); the oldest beyond ``size`` goes."""
        if key in self.waiting:
            return
        self.waiting[key] = query
        while len(self.waiting) > self.size:
            dropped, _ = self.waiting.popitem(last=False)
            self._scores.pop(dropped, None)

    def take(self, key: str) -> Query:
        """Remove and return a waiting query (it becomes a task)."""
        self._scores.pop(key, None)
        return self.waiting.pop(key)

    def newest(self) -> str:
        return next(reversed(self.waiting))

    def best(
        self, ranker: LambdaMARTRanker, selector: Selector, first: Container[str]
    ) -> tuple[str, float] | None:
        """The waiting query to label now and its selector score: one of ``first`` if any waits
        (queries whose labels already exist), else the selector's best under the current committee;
        None when nothing the model can score waits. Queries of another feature count than the model
        (taken in before the first model fixed it) are passed over here."""
        width = ranker.n_features
        for key in [k for k, q in self.waiting.items() if len(q.documents[0].features) != width]:
            self.take(key)
        for key in self.waiting:
            if key in first:
                return key, 0.0
        if not self.waiting:
            return None
        keys = list(self.waiting)
        values = selector.score(self._committee_scores(ranker, keys))
        i = int(np.argmax(values))  # ties: the oldest, which would be dropped soonest
        return keys[i], float(values[i])

    def _committee_scores(self, ranker: LambdaMARTRanker, keys: list[str]) -> list[np.ndarray]:
        version = ranker.n_updates
        stale = [k for k in keys if self._scores.get(k, (-1, None))[0] != version]
        if stale:
            batch = query_batch([self.waiting[k] for k in stale])
            for k, scores in zip(stale, batch.split_scores(ranker.committee_scores(batch)), strict=True):
                self._scores[k] = (version, scores)
        return [self._scores[k][1] for k in keys]

    def state_dict(self) -> dict[str, Any]:
        """The waiting queries as records (the score cache is rebuilt on demand)."""
        return {"waiting": [[k, q.to_bytes().decode()] for k, q in self.waiting.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.waiting = OrderedDict((k, Query.model_validate_json(q)) for k, q in state["waiting"])
        self._scores.clear()

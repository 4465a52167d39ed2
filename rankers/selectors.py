"""Which unlabeled queries are worth an annotator's time: informativeness scores behind one interface.

Every selector sees, per query, the committee's scores as an array of shape ``(members, documents)``
(oldest checkpoint first, the serving model last) and returns one number per query: higher means
label it sooner.

Definitions (Baidu active LTR, arXiv 2205.10137, re-implemented):

- Ranking Entropy (RE, query-by-committee). Each member ranks the query's documents (descending
  score, ties by document order). For document d, let ``p_d(r)`` be the fraction of the M members
  that put d at position r. ``H_d = -sum_r p_d(r) log p_d(r)``; ``RE(q) = mean_d H_d / log M``.
  So RE lies in [0, 1]: 0 when every member ranks the query identically, 1 when every document's
  position differs between all members. With one member RE is 0. Optionally (``re_top=k``) every
  position from k on counts as one, so RE measures disagreement about the top k only; the default
  is the whole ranking.
- Prediction Variance (PV): the population variance of the serving model's scores over the query's
  documents (one document: 0).
- Discounted committee variance (DV): each member's scores are standardized over the query's
  documents (mean 0, sd 1; a constant member gives zeros); ``v_d`` is the variance of document d's
  standardized score across the M members, and ``DV(q) = sum_d w_d v_d / sum_d w_d`` with
  ``w_d = 1 / log2(2 + r_d)``, ``r_d`` the serving model's position of d (0 = top). So DV is a
  continuous disagreement that counts most where DCG looks: RE with a committee of 4 takes few
  distinct values on MQ2008's short queries (median 8 documents) and ties are many. One member: 0.
- Combined: ``pct(RE) + alpha * pct(PV)``, where ``pct`` is the percentile rank of a query's value
  (mid-rank for ties, in [0, 1]) within a reference set: the queries scored in the same call, plus,
  with ``window > 0``, the last ``window`` values scored before. RE and PV live on unrelated scales
  (PV in squared model-score units that change with every retrain); percentiles put both in [0, 1],
  so ``alpha`` is the weight of PV relative to RE (alpha=1: equal weight).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

CommitteeScores = Sequence[np.ndarray]


class Selector(ABC):
    """Scores queries by how informative their labels would be."""

    name: str = "selector"

    @abstractmethod
    def score(self, committee_scores: CommitteeScores) -> np.ndarray:
        """One informativeness value per query (higher: label sooner)."""

    def select(self, committee_scores: CommitteeScores, k: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of the ``k`` most informative queries, best first; ties broken at random."""
        return top_k(self.score(committee_scores), k, rng)

    def state_dict(self) -> dict[str, Any]:
        """What the selector remembers between calls (nothing, for a stateless criterion)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            raise ValueError(f"selector {self.name!r} keeps no state, got keys {sorted(state)}")


def top_k(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` largest ``values``, largest first, ties in random order."""
    order = np.lexsort((rng.random(len(values)), -np.asarray(values, dtype=np.float64)))
    return order[:k]


def _check(members: np.ndarray) -> np.ndarray:
    members = np.asarray(members, dtype=np.float64)
    if members.ndim != 2 or members.shape[0] < 1 or members.shape[1] < 1:
        raise ValueError(f"committee scores must have shape (members>=1, documents>=1), got {members.shape}")
    return members


def rank_positions(members: np.ndarray) -> np.ndarray:
    """``positions[m, d]``: where member m ranks document d (0 = top; ties by document order)."""
    order = np.argsort(-members, axis=1, kind="stable")
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, np.arange(members.shape[1])[None, :], axis=1)
    return positions


def ranking_entropy(members: np.ndarray, top: int | None = None) -> float:
    """RE of one query from its ``(members, documents)`` scores, in [0, 1] (see module doc).

    With ``top``, positions ``top`` and below count as one position ("not in the top"), so only
    disagreement about the head of the ranking (what DCG@k sees) adds entropy.
    """
    members = _check(members)
    m = members.shape[0]
    if m == 1:
        return 0.0
    positions = rank_positions(members).T  # (documents, members)
    if top is not None:
        positions = np.minimum(positions, top)
    # same[d, i]: how many members put d where member i put it; sum_r c_r log(c_r/M) = sum_i log(c_i/M).
    same = (positions[:, :, None] == positions[:, None, :]).sum(axis=2)
    entropy = -np.log(same / m).sum(axis=1) / m
    return float(entropy.mean() / math.log(m))


def prediction_variance(members: np.ndarray) -> float:
    """PV of one query: variance of the serving (last) member's scores over its documents."""
    return float(np.var(_check(members)[-1]))


def discounted_variance(members: np.ndarray) -> float:
    """DV of one query from its ``(members, documents)`` scores (see module doc)."""
    members = _check(members)
    if members.shape[0] == 1:
        return 0.0
    spread = members.std(axis=1, keepdims=True)
    standard = np.divide(
        members - members.mean(axis=1, keepdims=True), spread, out=np.zeros_like(members), where=spread > 0
    )
    weights = 1.0 / np.log2(2.0 + rank_positions(members[-1:])[0])
    return float(np.sum(weights * standard.var(axis=0)) / np.sum(weights))


class RankingEntropy(Selector):
    name = "re"

    def __init__(self, top: int | None = None) -> None:
        if top is not None and top < 1:
            raise ValueError("top must be >= 1 (or None: the whole ranking)")
        self.top = top

    def score(self, committee_scores: CommitteeScores) -> np.ndarray:
        return np.array([ranking_entropy(s, self.top) for s in committee_scores])


class DiscountedVariance(Selector):
    name = "dv"

    def score(self, committee_scores: CommitteeScores) -> np.ndarray:
        return np.array([discounted_variance(s) for s in committee_scores])


class PredictionVariance(Selector):
    name = "pv"

    def score(self, committee_scores: CommitteeScores) -> np.ndarray:
        return np.array([prediction_variance(s) for s in committee_scores])


class RandomSelector(Selector):
    """The baseline: every query equally likely, whatever the committee says."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def score(self, committee_scores: CommitteeScores) -> np.ndarray:
        return self.rng.random(len(committee_scores))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class PercentileScale:
    """Maps values to their mid-rank percentile in [0, 1] among the current call and a recent window."""

    def __init__(self, window: int = 0) -> None:
        if window < 0:
            raise ValueError("window must be >= 0")
        self.history: deque[float] = deque(maxlen=window)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        reference = np.sort(np.concatenate([np.fromiter(self.history, dtype=np.float64), values]))
        below = np.searchsorted(reference, values, side="left")
        not_above = np.searchsorted(reference, values, side="right")
        self.history.extend(values.tolist())
        if len(reference) == 1:
            return np.full(len(values), 0.5)
        return (below + not_above - 1) / (2.0 * (len(reference) - 1))


class Combined(Selector):
    """``pct(D) + alpha * pct(PV)``, D the committee disagreement (RE unless given, e.g. DV):
    percentiles make alpha a relative weight (see module doc)."""

    def __init__(
        self,
        alpha: float = 1.0,
        window: int = 0,
        top: int | None = None,
        disagreement: Selector | None = None,
    ) -> None:
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError("alpha must be a finite number >= 0")
        self.alpha = alpha
        self._re = RankingEntropy(top) if disagreement is None else disagreement
        self._pv = PredictionVariance()
        self.name = f"{self._re.name}+pv"
        self._re_scale, self._pv_scale = PercentileScale(window), PercentileScale(window)

    def score(self, committee_scores: CommitteeScores) -> np.ndarray:
        re = self._re_scale(self._re.score(committee_scores))
        pv = self._pv_scale(self._pv.score(committee_scores))
        return re + self.alpha * pv

    def state_dict(self) -> dict[str, Any]:
        return {"re_history": list(self._re_scale.history), "pv_history": list(self._pv_scale.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for scale, key in ((self._re_scale, "re_history"), (self._pv_scale, "pv_history")):
            scale.history.clear()
            scale.history.extend(state[key])


SELECTORS = ("re+pv", "re", "pv", "random", "dv+pv")


def make_selector(
    name: str, *, alpha: float = 1.0, window: int = 0, seed: int = 0, re_top: int | None = None
) -> Selector:
    """A selector by name: ``re+pv``, ``re``, ``pv``, ``random`` or ``dv+pv``; ``re_top``: see
    ranking_entropy."""
    if name == "re+pv":
        return Combined(alpha, window, re_top)
    if name == "dv+pv":
        return Combined(alpha, window, disagreement=DiscountedVariance())
    if name == "re":
        return RankingEntropy(re_top)
    if name == "pv":
        return PredictionVariance()
    if name == "random":
        return RandomSelector(seed)
    raise ValueError(f"unknown selector {name!r}; known: {', '.join(SELECTORS)}")

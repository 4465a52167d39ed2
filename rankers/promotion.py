"""The rank service's promotion gate: a retrained booster serves ``POST /rank`` only once it has done no
worse than the serving booster on labeled queries that neither of them trained on.

**Shadow window.** Every label batch retrains the ranker, which makes a new checkpoint. One of them at a
time is the *candidate*: the newest checkpoint when the previous decision was made. Each later label
batch is scored by the candidate and by the serving booster (progressive NDCG@10, per query) before any
of them could have trained on it: the candidate's training labels all came earlier, and those labels
only train the ranker's newer checkpoints, which are not being judged. Once the window holds
``promotion_queries`` judged queries (a query with no relevant document has no NDCG and is counted but
not judged), :meth:`streams.lineage.Lineage.gate` decides on the two mean NDCGs with
``promotion_margin``; the decision goes into the lineage with its evidence (both NDCGs, the margin,
the window's query counts and the offsets after which and up to which it was taken). Then the newest
checkpoint becomes the next candidate. A candidate is not replaced while it waits, so under a steady
label stream a decision comes every ``promotion_queries`` judged queries; a newer checkpoint that
arrives meanwhile is skipped, not lost, since the next candidate is trained on its labels too.

**Too few queries.** With fewer than ``promotion_queries`` judged queries there is no decision: the
candidate waits for more labels and the serving booster keeps serving (a few queries' NDCG is noisy
enough to reject good candidates and pass bad ones alike). The one exception is the first version:
nothing serves, so the first checkpoint serves at once (a model beats a 503). No held-back query exists
for it, so its evidence says so: metric ``train ndcg@10`` (its NDCG on the labels it trained on),
``serving`` None and a window of 0 held-back queries.

**Committee.** The selector's committee stays what the ranker keeps: its last ``committee_size``
checkpoints, whether they passed the gate or not. The committee chooses what to label next, so it
should reflect what the newest labels taught: a promoted-only committee would lag by a shadow window
and shrink while promotions are rare, and a rejected candidate is still a plausible model of the same
labels (another bagging draw), whose disagreement with the others is what query-by-committee measures.
The gate protects the users of ``/rank``, not the selector.

**Replay.** Everything here is a function of the label stream (windows count queries, not seconds) and
lives in the service state, serving and candidate boosters included, so a replay decides alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np

from rankers.data import QueryBatch
from rankers.lambdamart import LambdaMARTRanker
from rankers.metrics import mean_metrics, query_ndcg
from streams.lineage import GateEvidence, Lineage
from streams.option_config import OptionConfig

#: NDCG cut-off the gate compares (the metric the rankers are judged by throughout).
NDCG_K = 10
METRIC = f"ndcg@{NDCG_K}"


@dataclass(frozen=True)
class GateConfig(OptionConfig):
    """``--option rank.KEY=VALUE`` settings of the gate."""

    #: A candidate may have up to this much (relative) lower NDCG@10 than serving and still serve.
    promotion_margin: float = 0.05
    #: Judged held-back queries (with at least one relevant document) a decision needs.
    promotion_queries: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.promotion_margin < 1:
            raise ValueError(f"rank promotion_margin must lie in [0, 1), got {self.promotion_margin}")
        if self.promotion_queries < 1:
            raise ValueError(f"rank promotion_queries must be >= 1, got {self.promotion_queries}")


@dataclass
class Window:
    """The held-back queries a candidate has been scored on so far, beside the serving booster."""

    queries: int = 0
    judged: int = 0
    #: Sums of per-query NDCG@10 over the judged queries.
    candidate: float = 0.0
    serving: float = 0.0

    def add(self, batch: QueryBatch, candidate: np.ndarray, serving: np.ndarray) -> None:
        """Add ``batch``'s queries given both boosters' scores of its documents."""
        assert batch.grades is not None
        split = batch.split_scores
        for mine, theirs, grades in zip(split(candidate), split(serving), split(batch.grades), strict=True):
            self.queries += 1
            ndcg = query_ndcg(mine, grades, NDCG_K)
            if ndcg is None:
                continue
            self.judged += 1
            self.candidate += ndcg
            self.serving += query_ndcg(theirs, grades, NDCG_K) or 0.0  # same grades: defined too


@dataclass
class Checkpoint:
    """One booster the gate holds (serving or candidate), with its version and what it learned from."""

    version: int
    model: str
    offsets: dict[str, int]
    trained_at: float
    booster: lgb.Booster = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.booster = lgb.Booster(model_str=self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "model": self.model, "offsets": dict(self.offsets),
                "trained_at": self.trained_at}  # fmt: skip


class RankGate:
    """Which booster serves ``/rank``, the candidate in its shadow window, and the lineage of decisions."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self.lineage = Lineage()
        self.serving: Checkpoint | None = None
        self.candidate: Checkpoint | None = None
        self.window = Window()
        #: ``(booster, version)`` of the serving checkpoint, replaced whole on a promotion so that
        #: ``/rank`` can read it without the service lock while a retrain runs.
        self.snapshot: tuple[lgb.Booster, int] | None = None

    @property
    def serving_version(self) -> int:
        return 0 if self.serving is None else self.serving.version

    def retrained(
        self, ranker: LambdaMARTRanker, batch: QueryBatch, offsets: dict[str, int], now: float
    ) -> dict[str, float]:
        """After ``ranker`` learned ``batch``: score the candidate and the serving booster on it,
        decide when the window is full, and take the new checkpoint as candidate when none waits.
        Returns the batch's gate metrics."""
        metrics: dict[str, float] = {}
        if self.candidate is not None and self.serving is not None:
            self.window.add(
                batch,
                ranker.score_with(self.candidate.booster, batch),
                ranker.score_with(self.serving.booster, batch),
            )
            metrics["gate_window_judged"] = float(self.window.judged)
            if self.window.judged >= self.config.promotion_queries:
                metrics["gate_promoted"] = float(self._decide(offsets))
        snapshot = ranker.snapshot()
        if self.candidate is None and snapshot is not None:
            newest = Checkpoint(snapshot[1], ranker.committee()[-1], dict(offsets), now)
            if self.serving is None:
                metrics["gate_promoted"] = float(self._first(newest, ranker, batch))
            else:
                self.candidate = newest
        return metrics

    def _decide(self, offsets: dict[str, int]) -> bool:
        candidate, serving, window = self.candidate, self.serving, self.window
        assert candidate is not None and serving is not None
        evidence = GateEvidence(
            metric=METRIC,
            candidate=window.candidate / window.judged,
            serving=window.serving / window.judged,
            serving_version=serving.version,
            margin=self.config.promotion_margin,
            window={
                "queries": window.queries,
                "judged": window.judged,
                "after": dict(candidate.offsets),
                "to": dict(offsets),
            },
            lower_is_better=False,
        )
        return self._gate(candidate, evidence)

    def _first(self, newest: Checkpoint, ranker: LambdaMARTRanker, batch: QueryBatch) -> bool:
        """The first version serves at once; its only NDCG is on its own training labels (0 when
        none of them has a relevant document)."""
        trained = mean_metrics(batch, ranker.score_with(newest.booster, batch), ndcg_k=NDCG_K)[METRIC]
        evidence = GateEvidence(
            metric=f"train {METRIC}",
            candidate=0.0 if math.isnan(trained) else trained,
            serving=None,
            serving_version=None,
            margin=self.config.promotion_margin,
            window={"queries": 0, "judged": 0, "trained_queries": batch.n_queries,
                    "note": "no held-back query yet: nothing serves, so the first version serves at once"},
            lower_is_better=False,
        )  # fmt: skip
        return self._gate(newest, evidence)

    def _gate(self, candidate: Checkpoint, evidence: GateEvidence) -> bool:
        passed = self.lineage.gate(candidate.version, candidate.trained_at, candidate.offsets, evidence)
        if passed:
            self._serve(candidate)
        self.candidate, self.window = None, Window()
        return passed

    def _serve(self, checkpoint: Checkpoint) -> None:
        self.serving = checkpoint
        self.snapshot = (checkpoint.booster, checkpoint.version)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "lineage": self.lineage.state_dict(),
            "serving": None if self.serving is None else self.serving.state_dict(),
            "candidate": None if self.candidate is None else self.candidate.state_dict(),
            "window": asdict(self.window),
        }

    def load_state_dict(self, state: dict[str, Any] | None, ranker: LambdaMARTRanker) -> None:
        """Load the gate's state; None (a checkpoint from before the gate): the ranker's newest
        checkpoint serves, as it did then, recorded as such in a fresh lineage."""
        self.lineage, self.candidate, self.window = Lineage(), None, Window()
        self.serving = self.snapshot = None
        if state is None:
            snapshot = ranker.snapshot()
            if snapshot is not None:
                self._serve(Checkpoint(snapshot[1], ranker.committee()[-1], {}, 0.0))
                self.lineage.add(snapshot[1], 0.0, {}, {})
                reason = "served before the promotion gate existed (loaded from an older checkpoint)"
                self.lineage.record(snapshot[1], "promoted", reason, {})
            return
        self.lineage.load_state_dict(state["lineage"])
        if state["serving"] is not None:
            self._serve(Checkpoint(**state["serving"]))
        if state["candidate"] is not None:
            self.candidate = Checkpoint(**state["candidate"])
        self.window = Window(**state["window"])

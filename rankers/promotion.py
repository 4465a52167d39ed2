"""The rank service's model lifecycle: a promotion gate, probation with automatic rollback, drift
alarms and boosters served by hand.

**Shadow window.** Every label batch retrains the ranker, which makes a new checkpoint. One of them at a
time is the *candidate*: the newest checkpoint when the previous decision was made. Each later label
batch is scored by the candidate and by the serving booster (progressive NDCG@10, per query) before any
of them could have trained on it: the candidate's training labels all came earlier, and those labels
only train the ranker's newer checkpoints, which are not being judged. Once the window holds
``promotion_queries`` judged queries (a query with no relevant document has no NDCG and is counted but
not judged), :meth:`streams.lineage.Lineage.gate` decides on the two mean NDCGs with
``promotion_margin``; the decision goes into the lineage with its evidence (both NDCGs, the margin,
the window's query counts and the offsets after which and up to which it was taken). Then the newest
checkpoint becomes the next candidate (after a promotion: once its probation ends). A candidate is
not replaced while it waits, so under a steady label stream a decision comes every
``promotion_queries`` judged queries; a newer checkpoint that arrives meanwhile is skipped, not lost,
since the next candidate is trained on its labels too.

**Too few queries.** With fewer than ``promotion_queries`` judged queries there is no decision: the
candidate waits for more labels and the serving booster keeps serving (a few queries' NDCG is noisy
enough to reject good candidates and pass bad ones alike). The one exception is the first version:
nothing serves, so the first checkpoint serves at once (a model beats a 503). No held-back query exists
for it, so its evidence says so: metric ``train ndcg@10`` (its NDCG on the labels it trained on),
``serving`` None and a window of 0 held-back queries.

**Probation** (the rule is :mod:`streams.probation`, shared by every family). A promoted booster with
a predecessor is scored beside that predecessor on every later label batch, before the ranker learns
it (neither booster ever trains on it): the loss is 1 - NDCG@10 per judged query. When its mean over
the last ``rollback_queries`` judged queries exceeds the predecessor's by more than
``rollback_margin`` (relative), the predecessor serves again and the rollback is recorded with both
means (with ``rollback_confirm`` > 1, each of that many disjoint windows must say so, as CTR's
two); after ``probation_queries`` judged queries the booster is trusted. As in CTR, a batch is
judged at the next label batch, once the runner's drift alarm has seen its error.

**The bad update is not repeated.** A booster is a function of the labels it was fitted on, so the
trainer continues from the good version by its labels: the labels that made the bad booster are
*quarantined*, dropped from the ranker's training set. Those are the labels it learned beyond its
predecessor and the labels of the window it passed the gate on (they agreed with it: a corrupted
stretch that taught it also let it through). The labels learned while it was on probation stay:
they were scored before training and are the evidence against it. The predecessor's booster becomes
the newest committee member (what ``mode="continue"`` trains on from) and no candidate waits (none is
taken while a probation runs). So the next retrain is the predecessor's labels, the probation's and
the batch at hand, and it must pass the gate like any other. The lineage's rollback evidence names
how many labeled queries were quarantined and their offsets (``after`` the predecessor's, ``to``
the promotion's), so they can be found on the labels topic. The price: the clean labels among them
go too, since nothing here knows which labels were bad.

**Probation holds the gate.** While a promoted booster is on probation no candidate is taken: the
next candidate is the first checkpoint after the probation ends (trusted, or rolled back), and so
every probation compares a booster with a trusted predecessor. Otherwise, under a steady label
stream, a promotion every ``promotion_queries`` judged queries would end each probation long before
its window of ``rollback_queries`` filled. The price is lag: a promotion at most every
``probation_queries`` plus ``promotion_queries`` judged queries.

**A changed world is no bad update.** On labels from a changed world (concept drift, or a lasting
inversion of the grades) old boosters do worse too, and the better fit of the old world can do
worse than its predecessor. A drift alarm (:meth:`RankGate.on_drift`) therefore holds the running
probation while the predecessor does worse too (its mean loss over the window exceeds its own on the
gate's window by more than ``rollback_margin``), or for good once the booster was *proven* (no worse
over a full window before the alarm: only the labels can have changed when it does worse after it;
``hold_proven`` of the shared rule, as CTR); a held probation decides nothing and resumes once the
predecessor does as before. Under a lasting change it stays held until it ends trusted after
``probation_queries`` judged queries, and the next candidate is gated on the changed world. Rank
adapts nothing else on an alarm (``faster`` and ``warm-restart`` are CTR's). The drift alarm needs
``DRIFTLINE_DRIFT_WARMUP`` label batches twice over after the start (its baseline, then the test's
minimum) before it can alarm at all.

**By hand.** ``POST /models/rank/promote|rollback`` serves one of the last ``keep_versions``
boosters that served (:mod:`rankers.by_hand`); it ends a running probation, restarts the candidate's
window against the new serving booster and touches no label: an admin picks which booster serves,
which says nothing about which labels were wrong, and what the ranker learns next passes the gate
against the booster chosen.

**Committee.** The selector's committee stays what the ranker keeps: its last ``committee_size``
checkpoints, whether they passed the gate or not. The committee chooses what to label next, so it
should reflect what the newest labels taught: a promoted-only committee would lag by a shadow window
and shrink while promotions are rare, and a rejected candidate is still a plausible model of the same
labels (another bagging draw), whose disagreement with the others is what query-by-committee measures.
The gate protects the users of ``/rank``, not the selector.

**Replay.** Everything here is a function of the label stream (windows count queries, not seconds) and
lives in the service state, kept boosters, probation and quarantine marks included, so a replay
decides alike.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np

from rankers.by_hand import ServeByHand
from rankers.data import QueryBatch
from rankers.lambdamart import LambdaMARTRanker
from rankers.metrics import mean_metrics, query_ndcg
from streams.lifecycle_routes import kept_target
from streams.lineage import GateEvidence, Lineage
from streams.option_config import OptionConfig
from streams.probation import Probation, RollbackRule, Verdict

log = logging.getLogger(__name__)

#: NDCG cut-off the gate compares (the metric the rankers are judged by throughout).
NDCG_K = 10
METRIC = f"ndcg@{NDCG_K}"
#: What probation compares, lower is better.
LOSS = f"1 - {METRIC}"


@dataclass(frozen=True)
class GateConfig(OptionConfig):
    """``--option rank.KEY=VALUE`` settings of the gate, the probation and the kept boosters."""

    #: A candidate may have up to this much (relative) lower NDCG@10 than serving and still serve.
    promotion_margin: float = 0.05
    #: Judged held-back queries (with at least one relevant document) a decision needs.
    promotion_queries: int = 10
    #: A promoted booster counts as worse when its mean 1 - NDCG@10 exceeds its predecessor's by
    #: this much (relative) ...
    rollback_margin: float = 0.15
    #: ... over the last this many judged labeled queries (on each of the last ``rollback_confirm``
    #: disjoint windows of them): then the predecessor serves again.
    rollback_queries: int = 40
    rollback_confirm: int = 1
    #: Judged labeled queries a promoted booster is compared with its predecessor before it is trusted
    #: (0: no probation, the gate alone: a candidate every ``promotion_queries``, no rollback).
    probation_queries: int = 60
    #: Boosters that served kept to serve again (a rollback, or by hand), the serving one included.
    keep_versions: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.promotion_margin < 1:
            raise ValueError(f"rank promotion_margin must lie in [0, 1), got {self.promotion_margin}")
        if self.promotion_queries < 1:
            raise ValueError(f"rank promotion_queries must be >= 1, got {self.promotion_queries}")
        if self.keep_versions < 2:
            raise ValueError(f"rank keep_versions must be >= 2 (a rollback needs a predecessor), got "
                             f"{self.keep_versions}")  # fmt: skip
        self.rule()

    def rule(self) -> RollbackRule:
        """The probation's rule; a ValueError names the rank options when they do not make one."""
        try:
            if self.probation_queries < 0:
                raise ValueError(f"probation_queries must be >= 0, got {self.probation_queries}")
            if 0 < self.probation_queries < self.rollback_confirm * self.rollback_queries:
                needed = self.rollback_confirm * self.rollback_queries
                raise ValueError(
                    f"probation_queries={self.probation_queries} is shorter than rollback_confirm x "
                    f"rollback_queries = {needed}: no rollback could be confirmed"
                )
            length = max(self.probation_queries, 1)
            return RollbackRule(
                self.rollback_margin, self.rollback_queries, length, self.rollback_confirm, hold_proven=True
            )
        except ValueError as exc:
            raise ValueError(
                f"rank rollback_margin, rollback_queries, rollback_confirm, probation_queries: {exc}"
            ) from None


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
    """One booster the gate holds (serving, kept or candidate), with its version and what it learned from."""

    version: int
    model: str
    offsets: dict[str, int]
    trained_at: float
    #: Where its labels end in the ranker's label sequence: how many it trained on, the quarantined
    #: ones not counted (what a rollback to it cuts the label set back to).
    labels: int = 0
    booster: lgb.Booster = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.booster = lgb.Booster(model_str=self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "model": self.model, "offsets": dict(self.offsets),
                "trained_at": self.trained_at, "labels": self.labels}  # fmt: skip


class RankGate:
    """Which booster serves ``/rank``: the gate's candidate in its shadow window, the promoted booster on
    probation, the kept boosters and the lineage of every decision."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self.rule = self.config.rule()
        self.lineage = Lineage()
        self.serving: Checkpoint | None = None
        self.candidate: Checkpoint | None = None
        self.window = Window()
        #: The last ``keep_versions`` boosters that served, in the order they last served (the serving
        #: one last), so a rollback's predecessor outlives newer versions that served before it.
        self.kept: list[Checkpoint] = []
        self.probation: Probation | None = None
        #: Labeled queries learned so far (never decreases; what a serve by hand waits for on replay).
        self.learned = 0
        #: The end of the ranker's label sequence (:attr:`Checkpoint.labels`): ``learned`` less the
        #: quarantined labels.
        self.labels = 0
        #: Offsets of everything learned so far.
        self.learned_offsets: dict[str, int] = {}
        #: The label mark and offsets when the booster on probation was promoted: the end of what a
        #: rollback quarantines.
        self.promoted_labels = 0
        self.promoted_offsets: dict[str, int] = {}
        #: Serves by hand replayed before the ranker learned what it had when they were decided.
        self.pending: list[ServeByHand] = []
        #: ``(booster, version)`` of the serving checkpoint, replaced whole on a promotion so that
        #: ``/rank`` can read it without the service lock while a retrain runs.
        self.snapshot: tuple[lgb.Booster, int] | None = None

    @property
    def serving_version(self) -> int:
        return 0 if self.serving is None else self.serving.version

    # -- probation and automatic rollback (before the ranker learns a batch) ----------------------
    def watch(self, ranker: LambdaMARTRanker, batch: QueryBatch) -> dict[str, float]:
        """Roll back when the batches scored so far say so, else score the booster on probation and
        its predecessor on ``batch`` (judged at the next batch, once the drift alarm saw it). Call
        before ``ranker`` learns ``batch``: a rollback cuts its label set back first."""
        probation = self.probation
        if probation is None:
            return {}
        serving, predecessor = self.serving, self._kept(probation.predecessor)
        if serving is None or serving.version != probation.version or predecessor is None:
            self.probation = None  # served over by hand, or the predecessor is no longer kept
            return {}
        verdict = probation.verdict(self.rule)
        if verdict is Verdict.ROLL_BACK:
            self._roll_back(ranker, serving, predecessor, probation)
            return {"gate_rolled_back": 1.0}
        if verdict is Verdict.TRUSTED:
            self.probation = None
            return {}
        both = Window()
        both.add(
            batch, ranker.score_with(serving.booster, batch), ranker.score_with(predecessor.booster, batch)
        )
        if both.judged:
            new, old = (1 - total / both.judged for total in (both.candidate, both.serving))
            probation.add(both.judged, new, old, self.rule)
        return {"probation_judged": float(probation.evaluated)}

    def _roll_back(
        self, ranker: LambdaMARTRanker, bad: Checkpoint, good: Checkpoint, probation: Probation
    ) -> None:
        evidence = probation.evidence(LOSS, self.rule)
        judged, new, old = evidence.pop("samples"), evidence["serving"], evidence["predecessor"]
        start, end = good.labels, max(good.labels, self.promoted_labels)
        dropped = quarantine(ranker, good, self.labels - start, self.labels - end)
        self.labels -= end - start
        for kept in self.kept:  # marks inside the cut move to its start, those after it shift down
            kept.labels = kept.labels if kept.labels <= start else max(start, kept.labels - (end - start))
        evidence["window"] = {"judged": judged, "after": None, "to": dict(self.learned_offsets)}
        evidence["quarantined"] = {
            "queries": dropped,
            "after": dict(good.offsets),
            "to": dict(self.promoted_offsets),
        }
        self._adopt(good)
        reason = (
            f"v{bad.version} did worse than v{good.version} on the same last {judged} judged queries "
            f"({LOSS} {new:.4f} > {old:.4f} + {self.rule.margin:.0%}); v{good.version} serves again and "
            f"the {dropped} labeled queries v{bad.version} learned beyond it or passed the gate on are "
            "quarantined"
        )
        self._record(good, "rolled_back", reason, evidence)
        log.warning("rank: automatic rollback: %s", reason)

    def on_drift(self, action: str) -> None:
        """A drift alarm (any action): the running probation is held while its predecessor does worse
        too (see the module docstring); rank adapts nothing else."""
        probation = self.probation
        if probation is not None and probation.hear_alarm(self.rule):
            log.warning(
                "rank: drift alarm (%s): v%d's probation against v%d is held (old boosters do worse too)",
                action,
                probation.version,
                probation.predecessor,
            )

    # -- the gate (after the ranker learned a batch) ---------------------------------------------
    def retrained(
        self, ranker: LambdaMARTRanker, batch: QueryBatch, offsets: dict[str, int], now: float
    ) -> dict[str, float]:
        """After ``ranker`` learned ``batch``: score the candidate and the serving booster on it,
        decide when the window is full, and take the new checkpoint as candidate when none waits.
        Returns the batch's gate metrics."""
        self.learned += batch.n_queries
        self.labels += batch.n_queries
        metrics: dict[str, float] = {}
        if self.candidate is not None and self.serving is not None:
            self.window.add(
                batch,
                ranker.score_with(self.candidate.booster, batch),
                ranker.score_with(self.serving.booster, batch),
            )
            metrics["gate_window_judged"] = float(self.window.judged)
            if self.window.judged >= self.config.promotion_queries:
                metrics["gate_promoted"] = float(self._decide(offsets, now))
        snapshot = ranker.snapshot()
        if self.candidate is None and self.probation is None and snapshot is not None:
            newest = Checkpoint(snapshot[1], ranker.committee()[-1], dict(offsets), now, self.labels)
            if self.serving is None:
                metrics["gate_promoted"] = float(self._first(newest, ranker, batch))
            else:
                self.candidate = newest
        self.learned_offsets = dict(offsets)
        self._serve_due()
        return metrics

    def _decide(self, offsets: dict[str, int], now: float) -> bool:
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
        passed = self._gate(candidate, evidence)
        if passed and self.config.probation_queries:
            assert evidence.serving is not None
            self.probation = Probation(candidate.version, serving.version, now, 1 - evidence.serving)
            self.promoted_labels, self.promoted_offsets = self.labels, dict(offsets)
        return passed

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
            self._adopt(candidate)
        self.candidate, self.window = None, Window()
        return passed

    def _adopt(self, checkpoint: Checkpoint) -> None:
        """Serve ``checkpoint`` (one reference swap for ``/rank``) and keep it; the kept boosters that
        served longest ago go beyond ``keep_versions``; a running probation ends and the candidate's
        window restarts against it."""
        others = [c for c in self.kept if c.version != checkpoint.version]
        self.kept = [*others, checkpoint][-self.config.keep_versions :]
        self.serving = checkpoint
        self.snapshot = (checkpoint.booster, checkpoint.version)
        self.probation, self.window = None, Window()

    def _kept(self, version: int) -> Checkpoint | None:
        return next((c for c in self.kept if c.version == version), None)

    def _record(self, checkpoint: Checkpoint, action: str, reason: str, evidence: dict[str, Any]) -> None:
        """Record that ``checkpoint`` serves again (it may have left the lineage's last records)."""
        c = checkpoint
        self.lineage.serve_again(c.version, c.trained_at, c.offsets, action, reason, evidence)

    # -- served by hand --------------------------------------------------------------------------
    def manual_target(self, action: str, number: int | None) -> Checkpoint:
        """The kept booster an admin's ``action`` serves (:func:`streams.lifecycle_routes.kept_target`)."""
        return kept_target(self.kept, self.serving, action, number, lambda c: c.version)

    def serve_by_hand(self, serve: ServeByHand) -> None:
        """Apply an admin's serve (idempotent); on a replay that has not learned as many labels as
        when it was decided, it waits for them (in the state)."""
        if self.learned < serve.learned:
            self.pending = [*self.pending, serve]
        else:
            self._serve_by_hand(serve)

    def _serve_due(self) -> None:
        due = [s for s in self.pending if s.learned <= self.learned]
        self.pending = [s for s in self.pending if s.learned > self.learned]
        for serve in due:
            self._serve_by_hand(serve)

    def _serve_by_hand(self, serve: ServeByHand) -> None:
        text = serve.text()
        checkpoint = self._kept(serve.version)
        if checkpoint is None or checkpoint.model != text:  # a replay numbered its boosters otherwise
            checkpoint = Checkpoint(serve.version, text, serve.offsets, serve.trained_at, self.labels)
        if self.serving is not checkpoint:
            self._adopt(checkpoint)
        reason = f"by hand: v{serve.version} serves instead of v{serve.was}"
        self._record(checkpoint, serve.action, reason, {})

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "lineage": self.lineage.state_dict(),
            "serving": None if self.serving is None else self.serving.state_dict(),
            "kept": [c.state_dict() for c in self.kept if c is not self.serving],
            "candidate": None if self.candidate is None else self.candidate.state_dict(),
            "window": asdict(self.window),
            "probation": None if self.probation is None else self.probation.state_dict(),
            "learned": self.learned,
            "labels": self.labels,
            "learned_offsets": dict(self.learned_offsets),
            "promoted_labels": self.promoted_labels,
            "promoted_offsets": dict(self.promoted_offsets),
            "pending": [s.data() for s in self.pending],
        }

    def load_state_dict(self, state: dict[str, Any] | None, ranker: LambdaMARTRanker) -> None:
        """Load the gate's state. None (a checkpoint from before the gate): the ranker's newest
        checkpoint serves, as it did then, recorded as such in a fresh lineage. A state from before
        probation has no kept boosters but the serving one, and counts every label the ranker holds
        as learned by each of its boosters."""
        held = 0 if ranker.labeled is None else ranker.labeled.n_queries
        state = {} if state is None else state
        self.lineage, self.window, self.probation = Lineage(), Window(**state.get("window", {})), None
        self.learned, self.labels = int(state.get("learned", held)), int(state.get("labels", held))
        self.learned_offsets = dict(state.get("learned_offsets", {}))
        self.promoted_labels = int(state.get("promoted_labels", self.labels))
        self.promoted_offsets = dict(state.get("promoted_offsets", {}))
        self.pending = [ServeByHand(**data) for data in state.get("pending", [])]

        def checkpoint(saved: dict[str, Any] | None) -> Checkpoint | None:
            return None if saved is None else Checkpoint(**{"labels": self.labels, **saved})

        self.candidate = checkpoint(state.get("candidate"))
        self.serving = self.snapshot = None
        self.kept = [c for c in map(checkpoint, state.get("kept", [])) if c is not None]
        serving = checkpoint(state.get("serving"))
        if "lineage" in state:
            self.lineage.load_state_dict(state["lineage"])
            self.probation = Probation.from_state(state.get("probation"))
        elif ranker.snapshot() is not None:
            serving = Checkpoint(ranker.snapshot()[1], ranker.committee()[-1], {}, 0.0, self.labels)  # type: ignore[index]
            self.lineage.add(serving.version, 0.0, {}, {})
            reason = "served before the promotion gate existed (loaded from an older checkpoint)"
            self.lineage.record(serving.version, "promoted", reason, {})
        if serving is not None:
            self.kept = [*self.kept, serving]
            self.serving, self.snapshot = serving, (serving.booster, serving.version)


def quarantine(ranker: LambdaMARTRanker, good: Checkpoint, after: int, until: int) -> int:
    """Restart ``ranker`` from ``good``: drop the labeled queries it holds from the ``after``-th last
    to the ``until``-th last (those that made the bad booster) and make ``good``'s booster its newest
    committee member. Returns how many were dropped (fewer when its label cap already let the oldest
    go)."""
    labeled = ranker.labeled
    held = 0 if labeled is None else labeled.n_queries
    start, end = max(held - after, 0), max(held - until, 0)
    state = ranker.state_dict()
    state["members"] = [*state["members"], good.model]
    ranker.load_state_dict(state)
    keep = [*range(start), *range(end, held)]
    ranker.labeled = labeled.select(keep) if labeled is not None and keep else None
    return end - start

"""The forecast promotion gate and probation: forecasts come from a version that passed the gate and
still does no worse than its predecessor, while the learner trains on.

**Gate.** The online learner never publishes directly once a version serves. Every
``candidate_every`` learned windows it is frozen (a copy) into a candidate, at a micro-batch boundary
so that the candidate's offsets are exactly what it learned from. The next ``gate_windows`` training
pairs are the held-back slice: neither the candidate (frozen before them) nor the serving version
(older still) has trained on them. Both forecast each pair's look-back with ``predict``, as serving it
would have, before the learner trains on it; once the slice is complete, the candidate serves only if
its MSE passes :meth:`streams.lineage.GateEvidence.passes` against the serving version's. Every
decision goes into the :class:`~streams.lineage.Lineage` with both MSEs, the margin, the slice's
sample count and offsets. Until a first candidate passes (nothing to compare it with, so it always
does), the learner's own forecasts are published, as without the gate.

**Probation** (the rule is :mod:`streams.probation`, shared by every family). A promoted version
with a predecessor is scored beside that predecessor on every later training pair, before the
learner trains on it, for ``probation_windows`` windows. Each micro-batch first judges the pairs
scored so far (so the drift alarm, fed after the batch, has seen them), then scores its own. When
the version's mean MSE over the last ``rollback_windows`` windows exceeds the predecessor's by more
than ``rollback_margin``, the predecessor serves again, the learner continues from its weights (so
the bad update is not simply repeated), a candidate being scored is dropped (it learned from the bad
version's trajectory) and the rollback goes into the lineage. A drift alarm
(:meth:`ForecastGate.hear_alarm`) holds the probation while the predecessor does worse too: the
world changed under both versions, which is no evidence against the update.

The last ``keep_versions`` promoted versions are kept; an admin may serve any of them by hand
(:meth:`ForecastGate.serve_by_hand`, made durable by the service). Only the gate's slice and the
probation cost extra forward passes (one per frozen version and scored pair); serving forecasts
replace the learner's. Time is counted in windows, not seconds, and the whole state is
checkpointed, so a replay decides alike.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from forecasters.batch import WindowBatch
from forecasters.learner import Forecaster
from streams.lifecycle_routes import kept_target
from streams.lineage import GateEvidence, Lineage
from streams.option_config import OptionConfig
from streams.probation import Probation, RollbackRule, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionConfig(OptionConfig):
    """``--option forecast.KEY=VALUE`` settings of the gate and the probation."""

    #: Learned windows between two candidates (counted from one freeze to the next). On ETTh2 (one
    #: series, H=24) 256 served forecasts with 1.7% less MSE than the learner itself, 512 with 7.7%
    #: more: a frozen version stops adapting (docs/forecasters.md, "Promotion gate").
    candidate_every: int = 256
    #: Training pairs in each candidate's held-back slice (both versions forecast each of them).
    gate_windows: int = 32
    #: A candidate may have up to this much (relative) more MSE than serving and still serve.
    promotion_margin: float = 0.02
    #: A promoted version counts as worse when its MSE exceeds its predecessor's by this much...
    #: On ETTh2 (bench/forecast_rollback.py) 5% or 48 windows rolled clean versions back 3 times in
    #: 6,000 windows and served 4.8% more MSE than no probation; 10% over 96 none, and still caught
    #: a corrupted version 160 windows after it began serving (docs/forecasters.md, "Promotion gate").
    rollback_margin: float = 0.1
    #: ... on average over the last this many windows: then the predecessor serves again.
    rollback_windows: int = 96
    #: Windows a promoted version is compared with its predecessor before it is trusted.
    probation_windows: int = 256
    #: Promoted versions kept (the serving one and its predecessors): what a rollback can serve.
    keep_versions: int = 3

    def __post_init__(self) -> None:
        least = {"candidate_every": 1, "gate_windows": 1, "rollback_windows": 1, "probation_windows": 1}
        for name, low in {**least, "keep_versions": 2}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"forecast {name} must be an integer >= {low}, got {value!r}")
        for name in ("promotion_margin", "rollback_margin"):
            margin = getattr(self, name)
            if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin >= 0:
                raise ValueError(f"forecast {name} must be a number >= 0, got {margin!r}")

    def rule(self) -> RollbackRule:
        return RollbackRule(self.rollback_margin, self.rollback_windows, self.probation_windows)


@dataclass
class Frozen:
    """A frozen copy of the learner: it only forecasts. ``trained_at`` (its freeze time) tells it
    from a namesake that a re-batched replay froze elsewhere."""

    version: int
    learner: Forecaster
    trained_at: float = 0.0


@dataclass
class Trial:
    """A candidate being scored on its held-back slice; the totals sum each scored window's MSE."""

    candidate: Frozen
    trained_at: float
    #: What the candidate learned from: the offsets of the last micro-batch before it was frozen.
    offsets: dict[str, int]
    windows: int = 0
    candidate_total: float = 0.0
    serving_total: float = 0.0


class ForecastGate:
    """Candidates, their held-back scores, the kept and serving versions, the probation and the
    lineage of one forecast service."""

    def __init__(self, start_version: int, config: PromotionConfig | None = None) -> None:
        self.config = config or PromotionConfig()
        self.rule = self.config.rule()
        self.lineage = Lineage()
        self.last_version = start_version
        self.serving: Frozen | None = None
        #: The last ``keep_versions`` promoted versions, oldest first (the serving one among them).
        self.kept: list[Frozen] = []
        self.trial: Trial | None = None
        #: The serving version watched beside its predecessor, or None.
        self.probation: Probation | None = None
        self.since_candidate = 0
        #: Offsets of everything learned so far (the micro-batch in progress excluded).
        self.learned_offsets: dict[str, int] = {}

    def forecaster(self, learner: Forecaster) -> Forecaster:
        """What forecasts are published from: the serving version, or ``learner`` before any serves."""
        return learner if self.serving is None else self.serving.learner

    def version(self, start_version: int) -> int:
        return start_version if self.serving is None else self.serving.version

    def find(self, number: int) -> Frozen | None:
        return next((f for f in self.kept if f.version == number), None)

    # -- one micro-batch -------------------------------------------------------------------------
    def before_batch(self, learner: Forecaster) -> dict[str, float]:
        """Judge the probation on the pairs scored so far (rolling back into ``learner`` when it
        says so), then freeze ``learner`` into a candidate when one is due (before it learns this
        batch). Returns a rollback as batch metrics (none without one)."""
        rolled_back = self._judge(learner)
        if self.trial is None and self.since_candidate >= self.config.candidate_every:
            self.last_version += 1
            frozen_at = time.time()
            candidate = Frozen(self.last_version, copy.deepcopy(learner), frozen_at)
            self.trial = Trial(candidate, frozen_at, dict(self.learned_offsets))
            self.since_candidate = 0
        return rolled_back

    def score(self, rounds: Sequence[WindowBatch]) -> None:
        """Score the pairs of a micro-batch's ``rounds`` before the learner trains on any of them:
        the slice's pairs that a trial still needs with the candidate and serving, every pair on
        probation with serving and its predecessor (one probation step per round).

        No frozen version changes within a micro-batch (a rollback happens before it, a decision
        after it), so each one forecasts every pair it scores in one call, serving once for both
        the slice and the probation: a forward pass of 1 or 32 pairs costs about the same, and a
        call per round and use made a 3-round batch pay up to 12 passes instead of 3."""
        trial, serving, probation = self.trial, self.serving, self.probation
        predecessor = None if probation is None else self.find(probation.predecessor)
        watched = probation is not None and serving is not None and predecessor is not None
        needed = 0 if trial is None else max(0, self.config.gate_windows - trial.windows)
        if not rounds or not (watched or needed):
            return
        pairs = _concat(rounds)
        scored = _first_rows(pairs, len(pairs.x) if watched else needed)
        held = min(needed, len(scored.x))
        serving_errors = None if serving is None else _row_errors(serving.learner, scored)
        if trial is not None and held:
            held_back = _first_rows(scored, held)
            trial.candidate_total += float(_row_errors(trial.candidate.learner, held_back).sum())
            if serving_errors is not None:
                trial.serving_total += float(serving_errors[:held].sum())
            trial.windows += held
        if watched:
            assert probation is not None and predecessor is not None and serving_errors is not None
            old_errors = _row_errors(predecessor.learner, scored)
            for start, stop in _spans([len(r.x) for r in rounds]):
                new, old = serving_errors[start:stop].mean(), old_errors[start:stop].mean()
                probation.add(stop - start, float(new), float(old), self.rule)

    def after_batch(self, learned: int, offsets: dict[str, int]) -> dict[str, float]:
        """The batch's ``learned`` windows (up to ``offsets``) are in; decide a complete trial.
        Returns the decision as batch metrics (none without one)."""
        self.since_candidate += learned
        decided: dict[str, float] = {}
        trial = self.trial
        if trial is not None and trial.windows >= self.config.gate_windows:
            decided = self._decide(trial, offsets)
            self.trial = None
        self.learned_offsets = dict(offsets)
        return decided

    def _decide(self, trial: Trial, offsets: dict[str, int]) -> dict[str, float]:
        serving = self.serving
        evidence = GateEvidence(
            metric="mse",
            candidate=trial.candidate_total / trial.windows,
            serving=None if serving is None else trial.serving_total / trial.windows,
            serving_version=None if serving is None else serving.version,
            margin=self.config.promotion_margin,
            window={"samples": trial.windows, "after": trial.offsets, "to": dict(offsets)},
        )
        version = trial.candidate.version
        promoted = self.lineage.gate(version, trial.trained_at, trial.offsets, evidence)
        if promoted:
            self._keep(trial.candidate)
            self.serving = trial.candidate
            self.probation = None
            if serving is not None and evidence.serving is not None and math.isfinite(evidence.serving):
                self.probation = Probation(version, serving.version, time.time(), evidence.serving)
        (log.info if promoted else log.warning)(
            "forecast: v%d %s: %s", version, "promoted" if promoted else "rejected", evidence.reason()
        )
        return {"gate_version": float(version), "gate_promoted": float(promoted)}

    def _keep(self, frozen: Frozen) -> None:
        """Keep ``frozen`` (replacing a namesake); the oldest others go beyond ``keep_versions``."""
        kept = sorted(
            [*(f for f in self.kept if f.version != frozen.version), frozen], key=lambda f: f.version
        )
        while len(kept) > self.config.keep_versions:
            kept.remove(next(f for f in kept if f is not frozen and f is not self.serving))
        self.kept = kept

    # -- probation and automatic rollback --------------------------------------------------------
    def _judge(self, learner: Forecaster) -> dict[str, float]:
        """The probation's verdict on the pairs scored so far; a rollback serves the predecessor
        again and restores ``learner`` from it (returned as batch metrics)."""
        probation, serving = self.probation, self.serving
        predecessor = None if probation is None else self.find(probation.predecessor)
        if probation is None or serving is None or predecessor is None:
            return {}
        verdict = probation.verdict(self.rule)
        if verdict is Verdict.TRUSTED:
            self.probation = None
        if verdict is not Verdict.ROLL_BACK:
            return {}
        evidence = probation.evidence("mse", self.rule)
        samples, new, old = evidence.pop("samples"), evidence["serving"], evidence["predecessor"]
        evidence["window"] = {"samples": samples, "after": None, "to": dict(self.learned_offsets)}
        reason = (
            f"v{serving.version} did worse than v{predecessor.version} on the same last {samples} windows "
            f"(mse {new:.4f} > {old:.4f} + {self.config.rollback_margin:.0%}); "
            f"v{predecessor.version} serves again"
        )
        self._serve(predecessor, learner)
        self._record(predecessor, "rolled_back", reason, evidence)
        log.warning("forecast: automatic rollback: %s", reason)
        return {"rolled_back_to": float(predecessor.version), "rolled_back_from": float(serving.version)}

    def hear_alarm(self) -> bool:
        """A drift alarm: hold the running probation while the predecessor does worse too; True
        when a probation is now held."""
        probation = self.probation
        if probation is None or not probation.hear_alarm(self.rule):
            return False
        log.warning(
            "forecast: drift alarm: v%d's probation against v%d is held (old versions do worse too)",
            probation.version,
            probation.predecessor,
        )
        return True

    # -- serving a kept version (automatic rollback, or by hand) ---------------------------------
    def target(self, action: str, number: int | None) -> Frozen:
        """The kept version an admin's ``action`` serves (:func:`streams.lifecycle_routes.kept_target`)."""
        return kept_target(self.kept, self.serving, action, number, lambda f: f.version)

    def serve_by_hand(self, frozen: Frozen, action: str, learner: Forecaster) -> None:
        """Serve ``frozen`` (kept, or loaded from an admin's durable decision) and continue
        training from it; the lineage records ``action`` by hand."""
        was = None if self.serving is None else self.serving.version
        self._keep(frozen)
        self._serve(frozen, learner)
        self._record(frozen, action, f"by hand: v{frozen.version} serves instead of v{was}", {})
        self.last_version = max(self.last_version, frozen.version)

    def _serve(self, frozen: Frozen, learner: Forecaster) -> None:
        """``frozen`` serves and ``learner`` continues from it; a candidate being scored learned from
        what served before, so it is dropped and its number given back (it never reached the lineage)."""
        self.serving = frozen
        learner.load_state_dict(copy.deepcopy(frozen.learner.state_dict()))
        self.probation = None
        if self.trial is not None:
            self.last_version = self.trial.candidate.version - 1
            self.trial = None
        self.since_candidate = 0

    def _record(self, frozen: Frozen, action: str, reason: str, evidence: dict[str, Any]) -> None:
        self.lineage.serve_again(frozen.version, frozen.trained_at, {}, action, reason, evidence)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        trial = self.trial
        return {
            "lineage": self.lineage.state_dict(),
            "last_version": self.last_version,
            "since_candidate": self.since_candidate,
            "learned_offsets": dict(self.learned_offsets),
            "kept": [_frozen_state(f) for f in self.kept],
            "serving": None if self.serving is None else self.serving.version,
            "probation": None if self.probation is None else self.probation.state_dict(),
            "trial": None
            if trial is None
            else {
                "candidate": _frozen_state(trial.candidate),
                "trained_at": trial.trained_at,
                "offsets": dict(trial.offsets),
                "windows": trial.windows,
                "candidate_total": trial.candidate_total,
                "serving_total": trial.serving_total,
            },
        }

    def load_state_dict(self, state: dict[str, Any], learner: Forecaster) -> None:
        """Restore from :meth:`state_dict`; frozen versions are loaded into copies of ``learner``.
        A state from before probation (``serving`` a frozen version, nothing else kept) loads too."""
        self.lineage.load_state_dict(state["lineage"])
        self.last_version = int(state["last_version"])
        self.since_candidate = int(state["since_candidate"])
        self.learned_offsets = dict(state["learned_offsets"])
        if "kept" in state:
            self.kept = [_thaw(f, learner) for f in state["kept"]]
            self.serving = None if state["serving"] is None else self.find(int(state["serving"]))
        else:
            self.serving = None if state["serving"] is None else _thaw(state["serving"], learner)
            self.kept = [] if self.serving is None else [self.serving]
        self.probation = Probation.from_state(state.get("probation"))
        trial = state["trial"]
        self.trial = None
        if trial is not None:
            self.trial = Trial(
                _thaw(trial["candidate"], learner),
                float(trial["trained_at"]),
                dict(trial["offsets"]),
                int(trial["windows"]),
                float(trial["candidate_total"]),
                float(trial["serving_total"]),
            )


def _frozen_state(frozen: Frozen) -> dict[str, Any]:
    return {
        "version": frozen.version,
        "learner": frozen.learner.state_dict(),
        "trained_at": frozen.trained_at,
    }


def thaw_learner(state: dict[str, Any], template: Forecaster) -> Forecaster:
    """A copy of ``template`` holding the saved learner ``state``."""
    learner = copy.deepcopy(template)
    learner.load_state_dict(state)
    return learner


def _thaw(state: dict[str, Any], template: Forecaster) -> Frozen:
    trained_at = float(state.get("trained_at", 0.0))  # absent before probation
    return Frozen(int(state["version"]), thaw_learner(state["learner"], template), trained_at)


def _row_errors(learner: Forecaster, batch: WindowBatch) -> torch.Tensor:
    """Each pair's mean squared error over its horizon and channels, as ``learner`` forecasts it
    (the mean of a span of them is the span's MSE: every pair has as many values)."""
    prediction = learner.predict(batch)
    return (prediction.detach() - batch.target.to(prediction.device)).pow(2).mean(dim=(1, 2)).cpu()


def _spans(sizes: list[int]) -> list[tuple[int, int]]:
    """The (start, stop) rows of consecutive parts of ``sizes`` rows each."""
    stops = list(itertools.accumulate(sizes))
    return list(zip([0, *stops[:-1]], stops, strict=True))


def _concat(batches: Sequence[WindowBatch]) -> WindowBatch:
    """``batches``' pairs in one batch, in order (to forecast only: not one series' steps in order)."""
    if len(batches) == 1:
        return batches[0]
    marks = [b.marks for b in batches]
    keys = [b.keys for b in batches]
    return WindowBatch(
        torch.cat([b.x for b in batches]),
        torch.cat([b.target for b in batches]),
        None if any(m is None for m in marks) else torch.cat(marks),  # type: ignore[arg-type]
        None if any(k is None for k in keys) else tuple(itertools.chain.from_iterable(keys)),  # type: ignore[arg-type]
    )


def _first_rows(batch: WindowBatch, rows: int) -> WindowBatch:
    """``batch`` cut to its first ``rows`` rows (all of it when it has no more)."""
    if rows >= len(batch.x):
        return batch
    keys = None if batch.keys is None else batch.keys[:rows]
    marks = None if batch.marks is None else batch.marks[:rows]
    return WindowBatch(batch.x[:rows], batch.target[:rows], marks, keys, batch.sequential)

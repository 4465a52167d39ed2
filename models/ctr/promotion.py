"""The CTR model lifecycle: a promotion gate, probation with automatic rollback, drift actions.

**Gate.** When a swap is due, the trained model is frozen *before* it trains on the batch at hand,
so that batch is a held-back slice neither the candidate nor the serving version has seen. The
candidate's progressive logloss on it (what ``learn`` measures before its step) is compared with
the serving version's by the shared rule, :meth:`streams.lineage.GateEvidence.passes` (no worse than
``promotion_margin``, relative), and :meth:`streams.lineage.Lineage.gate` records the decision with
its evidence: both losses, the margin, and the window (sample count and offsets).

**Probation** (the rule is :mod:`streams.probation`, shared by every family). A promoted version
with a predecessor is scored beside that predecessor on every following batch (the same events,
before training) for ``probation_samples`` impressions. When its mean logloss exceeds the
predecessor's by more than ``rollback_margin`` over the last ``rollback_samples`` impressions and
over the ``rollback_samples`` before them (``rollback_confirm`` = 2 disjoint windows: in the
lifecycle demo's stream replayed in process, a clean version 8.6% worse than its predecessor over
one window of three batches did 2.1% better over the next 10,000 impressions), the predecessor
serves again, training restarts from it (so the bad update is not simply repeated) and
the rollback is recorded.

**Against the last proven version.** Swaps come on a clock (``swap_interval_s``), so a version can be
promoted before the one it replaces has passed its probation (both windows its own and no worse, or
held by a changed world: :meth:`streams.probation.Probation.passed`): then the new version takes
that probation over (:meth:`~streams.probation.Probation.succeeded_by`), judged against the same
last proven version on the same window, and a rollback serves that version again over every
unproven one. Before, the swap ended the probation: a corrupted version replaced 5 s after its
promotion became the next version's predecessor and was never rolled back (the lifecycle demo's
escape). Taking no candidate until the verdict (as rank does) judged each version longer and rolled
a clean v5 back to v3 in ``test_the_demo_stream_rolls_no_clean_version_back``. The proven version is
held here (:attr:`CtrLifecycle.last_good`, checkpointed) because the version history may trim it
meanwhile (``keep_versions``).

**A changed world is no bad update.** On events from a changed world (concept drift, or a corrupted
stretch such as a run of flipped labels) old versions do worse too, and the better fit of the old
world can do worse than its predecessor: that is no evidence against the update. So:

- a batch counts toward a rollback only once the drift alarm (:mod:`streams.drift`, which the runner
  feeds each batch's error after ``process``) has seen it: :meth:`CtrLifecycle.watch` judges the
  batches scored so far *before* it scores the batch at hand, one batch later than it could;
- a drift alarm (:meth:`CtrLifecycle.on_drift`, any action) holds the running probation while
  the predecessor does worse too: its mean logloss over the probation's window exceeds its own on
  the gate's slice by more than ``rollback_margin``. A held probation decides nothing (the version
  keeps serving and is scored on); it resumes once the predecessor does as before again (the
  stretch is over), judged on events of that world. Under a lasting change it stays held until the
  next promoted version, gated on the changed world, replaces it: judging it would compare two
  versions trained before the change on events after it, and a rollback would also throw away what
  training has adapted since. When the predecessor does as before at the alarm, the alarm may be
  the new version's own breakage (the detector watches the trained model's error) and nothing is
  held: so the version that learned a corrupted stretch, promoted at its end, is still rolled back
  once the world is clean again, even if the alarm comes late. After the alarm every verdict asks
  again (the window may still hold events from before the change when the alarm comes);
- an alarm holds the probation of a *proven* version (no worse than the margin over a full window
  before the alarm) until it ends, whatever the predecessor does: an early model near the base rate
  does as well on flipped labels as on true ones, so it cannot show the change, while the frozen
  version can only have turned worse because the events did (``hold_proven`` in the shared rule).
- a version promoted while the running probation is held was gated on a slice of the changed world
  (the version that learned a corrupted stretch, gated at its end): its first full window that says
  worse rolls it back, not ``rollback_confirm`` of them (``gated_in_changed_world`` in the shared
  rule; without it the dashboard test's stretch version, 1-10% worse on clean windows, escaped).

The alarm must come within ``rollback_confirm`` x ``rollback_samples`` impressions of a change for
this to hold (the confirming window also gives it the time); a slower alarm lets the rollback go
first. The drift actions then adapt (``faster``, ``warm-restart``).

All of it runs inside ``process`` and the runner's drift hook from stream data only, and the
probation is part of the checkpointed state, so a replay after a crash decides alike; "time" is
therefore counted in impressions, not seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.ctr.features import CtrBatch
from models.ctr.learner import CtrLearner, CtrScorer
from models.ctr.metrics import log_loss
from models.ctr.versions import ModelVersion
from streams.lineage import GateEvidence, Lineage
from streams.option_config import OptionConfig
from streams.probation import Probation, RollbackRule, Verdict
from streams.service import Output

if TYPE_CHECKING:
    from models.ctr.service import CtrService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LifecycleConfig(OptionConfig):
    """``--option ctr.KEY=VALUE`` settings of the gate, the probation and the drift actions."""

    #: A candidate may have up to this much (relative) more logloss than serving and still serve.
    promotion_margin: float = 0.02
    #: A promoted version counts as worse when its logloss exceeds its predecessor's by this much...
    rollback_margin: float = 0.05
    #: ... on average over the last this many impressions...
    rollback_samples: int = 20_000
    #: ... and over each of this many disjoint such windows (the newest last): then the
    #: predecessor serves again. One window alone rolled back clean versions on stream noise.
    rollback_confirm: int = 2
    #: Impressions a promoted version is compared with its predecessor before it is trusted.
    probation_samples: int = 200_000
    #: Rows of each batch both versions score during probation (two forward passes on a whole
    #: 4096-row batch cost ~38% of a training step, measured; 1024 rows a quarter of that).
    probation_rows: int = 1024
    #: Drift action ``faster``: learning rates times this factor for ``faster_steps`` steps.
    faster_factor: float = 3.0
    faster_steps: int = 50

    def __post_init__(self) -> None:
        if min(self.promotion_margin, self.rollback_margin) < 0 or self.faster_factor <= 0:
            raise ValueError("ctr lifecycle margins must be >= 0 and faster_factor > 0")
        counts = (self.rollback_samples, self.rollback_confirm, self.probation_samples, self.probation_rows)
        if min(*counts, self.faster_steps) < 1:
            raise ValueError(
                "ctr rollback_samples, rollback_confirm, probation_samples, probation_rows and "
                "faster_steps must be >= 1"
            )


@dataclass(frozen=True)
class Candidate:
    """The trained model frozen before the batch it is validated on."""

    scorer: CtrScorer
    samples_seen: int
    steps: int


def batch_loss(scorer: CtrScorer, batch: CtrBatch) -> float:
    assert batch.labels is not None
    return log_loss(batch.labels.numpy(), scorer.predict(batch))


class CtrLifecycle:
    """Gate, probation and drift actions of one :class:`~models.ctr.service.CtrService`."""

    def __init__(self, service: CtrService, config: LifecycleConfig | None = None) -> None:
        self.service = service
        self.config = config or LifecycleConfig()
        self.lineage = Lineage()
        #: The version on probation, its predecessor, and the counts that decide a rollback.
        self.probation: Probation | None = None
        #: The version the running probation judges against (its ``predecessor``): the last that
        #: passed its probation; a rollback serves it again.
        self.last_good: ModelVersion | None = None
        #: Offsets of everything trained on so far (the batch being processed excluded).
        self.learned_offsets: dict[str, int] = {}
        self.faster_left = 0

    @property
    def rule(self) -> RollbackRule:
        """The probation rule the current config says (a config replaced later applies at once);
        an alarm holds a proven version (an early model near the base rate cannot show a change)."""
        c = self.config
        return RollbackRule(
            c.rollback_margin, c.rollback_samples, c.probation_samples, c.rollback_confirm, hold_proven=True
        )

    # -- the gate --------------------------------------------------------------------------------
    def freeze(self) -> Candidate:
        learner = self.service.learner
        return Candidate(learner.scorer(), learner.samples_seen, learner.steps)

    def consider(self, candidate: Candidate, metrics: dict[str, float], batch: CtrBatch) -> list[Output]:
        """Promote or reject ``candidate`` on ``batch`` (which it has not trained on); the
        ``model-updates`` record of a promoted version is returned."""
        history = self.service.history
        serving = history.serving
        evidence = GateEvidence(
            metric="logloss",
            candidate=metrics["logloss"],
            serving=None if serving is None else batch_loss(serving.scorer, batch),
            serving_version=None if serving is None else serving.number,
            margin=self.config.promotion_margin,
            window=self._window(len(batch)),
        )
        number = history.last_number + 1  # a rejected candidate keeps its number: lineage entries stay unique
        if not self.lineage.gate(number, time.time(), self.learned_offsets, evidence):
            history.last_number = number
            return []
        version = history.publish(candidate.scorer, candidate.samples_seen, candidate.steps, metrics)
        assert version.number == number, "the lineage names the version publish numbers"
        if serving is not None:
            self._start_probation(version, serving, evidence.serving)
        return [self.service.update_output(version)]

    def _start_probation(self, version: ModelVersion, serving: ModelVersion, loss: float | None) -> None:
        """Put ``version`` on probation against ``serving`` when that passed its own (or had none),
        else hand it the running probation against the same last proven version."""
        running = self.probation
        if running is not None and running.version != serving.number:
            running = None  # not the serving version's (served over by hand since)
        if running is not None and not running.passed(self.rule):
            self.probation = running.succeeded_by(version.number, time.time())
            return
        self.last_good = serving
        self.probation = Probation.after(running, version.number, serving.number, time.time(), loss)

    def published(self, version: ModelVersion, evidence: dict[str, Any], reason: str) -> None:
        """Record ``version`` as trained on the learned offsets and promoted."""
        self.lineage.add(version.number, version.created, self.learned_offsets, evidence)
        self.lineage.record(version.number, "promoted", reason, evidence)

    def _window(self, samples: int) -> dict[str, Any]:
        return {
            "samples": samples,
            "after": dict(self.learned_offsets),
            "to": dict(self.service.batch_offsets),
        }

    # -- probation and automatic rollback --------------------------------------------------------
    def watch(self, batch: CtrBatch) -> list[Output]:
        """Roll back when the batches scored so far say so, else score the version on probation
        and its predecessor on ``batch`` (judged at the next batch, once the drift alarm saw it)."""
        probation, serving, predecessor = self.probation, self.service.history.serving, self.last_good
        if probation is None:
            return []
        if serving is None or serving.number != probation.version or predecessor is None:
            self._end_probation()  # served over by hand, or a legacy predecessor no longer kept
            return []
        verdict = probation.verdict(self.rule)
        if verdict is Verdict.ROLL_BACK:
            return [self._roll_back(serving, predecessor, probation)]
        if verdict is Verdict.TRUSTED:
            self._end_probation()
            return []
        scored = batch.slice(0, min(len(batch), self.config.probation_rows))
        probation.add(
            len(batch), batch_loss(serving.scorer, scored), batch_loss(predecessor.scorer, scored), self.rule
        )
        return []

    def _roll_back(self, bad: ModelVersion, good: ModelVersion, probation: Probation) -> Output:
        history, learner = self.service.history, self.service.learner
        evidence = probation.evidence("logloss", self.rule)
        samples, new, old = evidence.pop("samples"), evidence["serving"], evidence["predecessor"]
        evidence["window"] = {"samples": samples, "after": None, "to": dict(self.learned_offsets)}
        history.adopt(good, bad.number)
        learner.restore(good.scorer)
        self._end_probation()
        before = len(evidence.get("confirmed_by", [])) - 1
        skipped = ", ".join(f"v{number}" for number in probation.skipped)
        reason = (
            f"v{bad.number} did worse than v{good.number} on the same last {samples:,} impressions "
            f"(logloss {new:.4f} > {old:.4f} + {self.config.rollback_margin:.0%})"
            + (f", as on the {before} window(s) before" if before > 0 else "")
            + (", promoted on a changed world's slice" if evidence.get("gated_in_changed_world") else "")
            + f"; v{good.number} serves again"
            + (f", skipping unproven {skipped}" if skipped else "")
        )
        self.lineage.serve_again(good.number, good.created, {}, "rolled_back", reason, evidence)
        log.warning("ctr: automatic rollback: %s", reason)
        return self.service.update_output(good, rollback=True)

    def _end_probation(self) -> None:
        self.probation, self.last_good = None, None

    def learned(self) -> None:
        """After a batch: its offsets are learned; a ``faster`` boost counts down."""
        self.learned_offsets = dict(self.service.batch_offsets)
        if self.faster_left:
            self.faster_left -= 1
            if not self.faster_left:
                scale_learning_rates(self.service.learner, 1 / self.config.faster_factor)

    def served_by_hand(self, version: ModelVersion, action: str, was: int) -> None:
        """Record an admin's promote or rollback (an outcome from the control topic)."""
        reason = f"by hand: v{version.number} serves instead of v{was}"
        self.lineage.serve_again(version.number, version.created, {}, action, reason, {})

    # -- drift actions ---------------------------------------------------------------------------
    def on_drift(self, action: str) -> None:
        """A drift alarm: the running probation is held while its predecessor does worse too, or
        for good when the version was proven (see the module docstring); then ``faster`` boosts
        the learning rates for a while and ``warm-restart`` trains on from the serving version (the
        last that passed the gate); ``alarm`` adapts nothing."""
        probation = self.probation
        if probation is not None and probation.hear_alarm(self.rule):
            log.warning(
                "ctr: drift alarm: v%d's probation against v%d is held (%s)",
                probation.version,
                probation.predecessor,
                "old versions do worse too" if probation.old_worse_too(self.rule) else "proven before",
            )
        learner, serving = self.service.learner, self.service.history.serving
        if action == "faster" and not self.faster_left:
            scale_learning_rates(learner, self.config.faster_factor)
            self.faster_left = self.config.faster_steps
        elif action == "warm-restart" and serving is not None:
            learner.restore(serving.scorer)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "lineage": self.lineage.state_dict(),
            "probation": None if self.probation is None else self.probation.state_dict(),
            "last_good": self._last_good_state(),
            "learned_offsets": dict(self.learned_offsets),
            "faster_left": self.faster_left,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore (call after the version history); a state from before ``last_good`` takes the
        probation's predecessor from the history."""
        self.lineage.load_state_dict(state["lineage"])
        self.probation = Probation.from_state(state["probation"])
        self.last_good = self._load_last_good(state.get("last_good"))
        self.learned_offsets = dict(state["learned_offsets"])
        self.faster_left = int(state["faster_left"])

    def _last_good_state(self) -> dict[str, Any] | None:
        """``last_good``'s info, with its weights only when the history no longer keeps it."""
        good = self.last_good
        if good is None:
            return None
        kept = any(v is good for v in self.service.history.versions)
        return good.info() if kept else {**good.info(), "scorer": good.scorer.state_dict()}

    def _load_last_good(self, state: dict[str, Any] | None) -> ModelVersion | None:
        history = self.service.history
        if state is None:
            legacy = self.probation.predecessor if self.probation is not None else None
            return next((v for v in history.versions if v.number == legacy), None)
        kept = history.find(int(state["version"]), float(state["created"]))
        if kept is not None:
            return kept
        return ModelVersion.from_info(state, self.service.learner.scorer_from(state["scorer"]))


def scale_learning_rates(learner: CtrLearner, factor: float) -> None:
    """Multiply both optimisers' learning rates (and the warm-up schedule's base) by ``factor``."""
    for group in learner.embed_optimizer.param_groups:
        group["lr"] *= factor
    for group in learner.dense_optimizer.param_groups:
        group["lr"] *= factor
    learner.scheduler.base_lrs = [lr * factor for lr in learner.scheduler.base_lrs]

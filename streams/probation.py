"""Probation of a promoted version: the one rule that rolls a bad update back, for every family.

A version that passed the gate (:mod:`streams.lineage`) and replaced a predecessor is scored beside
that predecessor on the same later events, before either trains on them: each scored step adds
``[samples, version's loss, predecessor's loss]`` to a sliding window of about ``rollback_samples``.
When the version's mean loss over a full window exceeds the predecessor's by more than
``rollback_margin`` (relative), the update was bad and the predecessor serves again. After
``probation_samples`` the version is trusted and probation ends.

**Confirmed, not one window's word** (``RollbackRule.confirm``). A stream's losses are
autocorrelated: neighbouring steps see the same users and the same moment, so one short window can
show a version far worse than it is, and a window that slides and is judged at every step gets many
chances to. The standard error of the paired per-step differences inside the window does not catch
it (measured on the CTR demo's MovieLens replay: a clean version 10% worse than its predecessor over
3 steps of 500, the three differences 0.045, 0.077, 0.084, about 6 standard errors, was 3% worse
over the next 6,000 impressions). With ``confirm=2`` the version must be worse by the margin on each
of the last two disjoint windows: a bad update stays worse, a fluctuation rarely does twice.

**A changed world is no bad update.** When the world changes (concept drift, or a corrupted stretch
such as flipped labels) old versions do worse too, and the better fit of the old world can do worse
than its predecessor: that is no evidence against the update. So after a drift alarm the probation
is *held* whenever the predecessor does more than ``rollback_margin`` worse on the newest window
than on the gate's slice (its ``baseline``): judged again at every verdict, since an alarm often
comes while the window still holds events from before the change, when the predecessor does not
look worse yet. A held probation decides nothing and resumes once the predecessor does as before
again. Losses are "lower is better" (MSE, logloss, 1 - NDCG).

**A proven version is held by an alarm for good** (``RollbackRule.hold_proven``). A predecessor that
predicts little (near the base rate) does about as well on a changed world as before, so it cannot
show the change; the version itself can. Both are frozen: when the version did no worse than the
margin over a full window before any alarm (*proven*), only the events can have changed when it
does worse after one. So an alarm holds a proven version's probation until it ends (the next
promotion, gated on the changed world, replaces it), whatever the predecessor does.

**The baseline is the last proven version** (:meth:`Probation.succeeded_by`). A family that gates
its next candidate on a clock, not on the probation (CTR), can promote a version while the one
before is still on probation. That probation does not end there: the new version takes it over,
judged against the same predecessor (the last version that *passed* its probation), on the same
window (the steps scored for the replaced version count toward its confirmation: they judged the
updates since that predecessor) and the same ``baseline``, with any drift alarm still heard. So a bad
update that a quick promotion replaced is still rolled back, to the version before it, skipping
every unproven one (``skipped``). A replaced version *passed* (:meth:`Probation.passed`) when its own
steps filled every confirming window and none said worse, or when its probation is held: the world
changed, the rule has nothing against it, and the new version was gated on the changed world (as a
held probation always ended; skipping a held version instead compared the stretch's version of the
CTR demo replay (seed 2) with an older, weaker one: 4-5% worse, under the 8% margin, it stayed). Then the
new version starts a fresh probation against it. A version that was trusted (``length``), rolled
back to, or served by hand is proven too. Families that take no candidate while a probation runs
(forecast, rank) never hand one over.

**A version gated on a changed world is judged on one window** (``gated_in_changed_world``). A
version promoted while the running probation is held was validated on a slice of a changed world
(a corrupted stretch that the version learned, say): the gate's evidence says nothing about the
world it serves once that is over, so the first full window that says worse rolls it back, without
waiting for ``confirm`` windows. Its probation also starts as having heard that alarm, so a window
still holding the changed world's events (where the version that learned them does better) cannot
prove it. Without this, the dashboard test's stretch version escaped: replayed with the worker a
little slower than the stream (``bench/lifecycle_replay.py --scenario dashboard --busy 1.5``, seed 1
with v3 rejected), it did 1-10% worse than its predecessor on clean windows, about 6% on average,
and two disjoint windows in a row never both said worse than the 8% margin: nothing was rolled
back. A version gated on a clean slice keeps ``confirm``: one window's word rolled clean versions
back.

Samples are whatever a family counts (impressions, windows, queries), never seconds, and the whole
probation is plain data in the family's checkpoint, so a replay after a crash decides alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class RollbackRule:
    """How long a promoted version is watched and how much worse it may do."""

    #: A version counts as worse when its mean loss exceeds its predecessor's by this much (relative)...
    margin: float
    #: ... over the last this many samples (the window; no verdict before it is full) ...
    samples: int
    #: ... at any time in its first this many samples; then it is trusted.
    length: int
    #: Disjoint windows, the newest last, that must each say "worse" (1: the newest window alone).
    confirm: int = 1
    #: A drift alarm holds a proven version's probation until it ends (see the module docstring).
    hold_proven: bool = False

    def __post_init__(self) -> None:
        if not self.margin >= 0 or min(self.samples, self.length, self.confirm) < 1:
            raise ValueError(
                f"rollback margin must be >= 0 and its sample counts and confirm >= 1, got "
                f"{self.margin!r}, {self.samples!r}, {self.length!r}, {self.confirm!r}"
            )


class Verdict(Enum):
    """What a probation says before the next scored step."""

    WATCH = "watch"  # go on scoring both versions
    ROLL_BACK = "roll_back"  # the predecessor serves again
    TRUSTED = "trusted"  # probation is over; the version stays


@dataclass
class Probation:
    """A promoted version watched beside its predecessor (checkpointed with the family's state)."""

    version: int
    predecessor: int
    #: Wall-clock time of the promotion (for the record only; decisions count samples).
    since: float
    #: The predecessor's loss on the gate's slice: how it did before the window's events.
    baseline: float | None
    #: Samples scored for this version itself (inherited steps not counted): ``length`` trusts it.
    evaluated: int = 0
    held: bool = False
    #: ``[samples, version's loss, predecessor's loss]`` per scored step, oldest first.
    window: list[list[float]] = field(default_factory=list)
    #: A drift alarm was heard: from then on every verdict asks whether the world changed.
    alarmed: bool = False
    #: A full window of this version's own steps said "no worse" before any alarm.
    proven: bool = False
    #: Unproven versions this probation judged before ``version`` took it over, oldest first: a
    #: rollback serves ``predecessor`` again over them.
    skipped: list[int] = field(default_factory=list)
    #: Promoted while the running probation was held: one window decides (module docstring).
    gated_in_changed_world: bool = False

    @classmethod
    def after(
        cls, running: Probation | None, version: int, predecessor: int, since: float, baseline: float | None
    ) -> Probation:
        """A fresh probation of ``version`` against ``predecessor``, promoted while ``running`` (the
        replaced version's, if any) was as it is now: a held one means the gate saw a changed world."""
        changed = running is not None and running.held
        return cls(version, predecessor, since, baseline, alarmed=changed, gated_in_changed_world=changed)

    def confirming(self, rule: RollbackRule) -> int:
        """How many of the newest disjoint windows must each say worse for a rollback."""
        return 1 if self.gated_in_changed_world else rule.confirm

    def windows(self, rule: RollbackRule) -> list[tuple[int, float, float]]:
        """Up to ``rule.confirm`` disjoint windows, newest first, each as ``(samples, version's mean
        loss, predecessor's mean loss)`` (one empty window before the first step)."""
        return _windows(self.window, rule) or [(0, 0.0, 0.0)]

    def verdict(self, rule: RollbackRule) -> Verdict:
        """Judge the steps scored so far; after an alarm, first hold while the world is changed
        (a held probation resumes once it is back)."""
        own = _windows(self._own(), rule)
        if not self.alarmed and own and _no_worse(own[0], rule):
            self.proven = True
        windows = self.windows(rule)[: self.confirming(rule)]
        if self.held or self.alarmed:
            self.held = self._changed_world(rule)
        worse = [w[0] >= rule.samples and not _no_worse(w, rule) for w in windows]
        if not self.held and len(worse) == self.confirming(rule) and all(worse):
            return Verdict.ROLL_BACK
        return Verdict.TRUSTED if self.evaluated >= rule.length else Verdict.WATCH

    def add(self, samples: int, new: float, old: float, rule: RollbackRule) -> None:
        """One scored step: both versions' mean loss over the same ``samples`` events; steps no
        window needs any more are dropped."""
        self.window.append([samples, new, old])
        self.evaluated += samples
        while len(self.window) > 1 and _holds_all(self.window[1:], rule):
            self.window.pop(0)

    def passed(self, rule: RollbackRule) -> bool:
        """Whether the version, replaced now, passed its probation (see the module docstring):
        its own steps fill every confirming window and none says worse, or it is held."""
        if self.held:
            return True
        own = _windows(self._own(), rule)
        return len(own) == rule.confirm and all(_no_worse(w, rule) for w in own)

    def succeeded_by(self, version: int, since: float) -> Probation:
        """The probation of ``version``, promoted while this one's version had not passed: the
        same predecessor, baseline, window and alarm state; ``version`` must earn ``proven`` and
        trust (``evaluated``) on its own steps."""
        return Probation(
            version,
            self.predecessor,
            since,
            self.baseline,
            held=self.held,
            window=[list(step) for step in self.window],
            alarmed=self.alarmed,
            skipped=[*self.skipped, self.version],
            gated_in_changed_world=self.gated_in_changed_world,
        )

    def _own(self) -> list[list[float]]:
        """The window's newest steps scored for ``version`` itself (its ``evaluated`` samples)."""
        start, samples = len(self.window), 0
        while start > 0 and samples < self.evaluated:
            start -= 1
            samples += int(self.window[start][0])
        return self.window[start:]

    def hear_alarm(self, rule: RollbackRule) -> bool:
        """A drift alarm: hold while the predecessor does worse too; True when now held."""
        self.alarmed = True
        self.held = self.held or self._changed_world(rule)
        return self.held

    def _changed_world(self, rule: RollbackRule) -> bool:
        """After an alarm: the predecessor does worse too, or a proven version does worse now."""
        return self.old_worse_too(rule) or (rule.hold_proven and self.proven)

    def old_worse_too(self, rule: RollbackRule) -> bool:
        """The predecessor does more than the margin worse on the newest window than on the gate's
        slice: the world changed under both versions (not only the new one broke)."""
        samples, _, old = self.windows(rule)[0]
        return self.baseline is None or (samples > 0 and old > self.baseline * (1 + rule.margin))

    def evidence(self, metric: str, rule: RollbackRule) -> dict[str, Any]:
        """What a rollback records: both means over the newest window, the margin and the
        promotion time; when more than one window confirmed it, every confirming window's
        ``[samples, version, predecessor]``; after a hand-over the unproven versions ``skipped``;
        ``gated_in_changed_world`` when one window decided for that reason."""
        windows = self.windows(rule)[: self.confirming(rule)]
        samples, new, old = windows[0]
        evidence: dict[str, Any] = {
            "metric": metric,
            "rolled_back_from": self.version,
            "serving": new,
            "predecessor": old,
            "margin": rule.margin,
            "promoted_at": self.since,
            "samples": samples,
        }
        if len(windows) > 1:
            evidence["confirmed_by"] = [list(w) for w in windows]
        if self.skipped:
            evidence["skipped"] = list(self.skipped)
        if self.gated_in_changed_world:
            evidence["gated_in_changed_world"] = True
        return evidence

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Probation | None:
        """Load a checkpointed probation; ones saved before ``baseline``/``held``/``alarmed``/
        ``proven``/``skipped``/``gated_in_changed_world`` existed load too."""
        if state is None:
            return None
        known = {name: state[name] for name in cls.__dataclass_fields__ if name in state}
        known.setdefault("baseline", None)
        return cls(**known)


def _means(steps: list[list[float]]) -> tuple[int, float, float]:
    """Samples in ``steps`` and both versions' sample-weighted mean loss (0s when empty)."""
    samples = int(sum(n for n, _, _ in steps))
    if not samples:
        return 0, 0.0, 0.0
    new, old = (sum(n * loss[i] for n, *loss in steps) / samples for i in (0, 1))
    return samples, new, old


def _no_worse(window: tuple[int, float, float], rule: RollbackRule) -> bool:
    """A full window in which the version's mean loss is within the margin of the predecessor's."""
    samples, new, old = window
    return samples >= rule.samples and new <= old * (1 + rule.margin)


def _windows(steps: list[list[float]], rule: RollbackRule) -> list[tuple[int, float, float]]:
    """Up to ``rule.confirm`` disjoint windows of ``steps``, newest first: each the fewest newest
    steps (before the next window's) that hold ``rule.samples``; the oldest may be short."""
    found: list[tuple[int, float, float]] = []
    end = len(steps)
    while end > 0 and len(found) < rule.confirm:
        start, samples = end, 0
        while start > 0 and samples < rule.samples:
            start -= 1
            samples += int(steps[start][0])
        found.append(_means(steps[start:end]))
        end = start
    return found


def _holds_all(steps: list[list[float]], rule: RollbackRule) -> bool:
    """``steps`` hold all ``rule.confirm`` windows, the oldest full too."""
    windows = _windows(steps, rule)
    return len(windows) == rule.confirm and windows[-1][0] >= rule.samples

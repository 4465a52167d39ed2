"""Probation of a promoted version: the one rule that rolls a bad update back, for every family.

A version that passed the gate (:mod:`streams.lineage`) and replaced a predecessor is scored beside
that predecessor on the same later events, before either trains on them: each scored step adds
``[samples, version's loss, predecessor's loss]`` to a sliding window of about ``rollback_samples``.
When the version's mean loss over a full window exceeds the predecessor's by more than
``rollback_margin`` (relative), the update was bad and the predecessor serves again. After
``probation_samples`` the version is trusted and probation ends.

**A changed world is no bad update.** When the world changes (concept drift, or a corrupted stretch
such as flipped labels) old versions do worse too, and the better fit of the old world can do worse
than its predecessor: that is no evidence against the update. So a drift alarm *holds* the probation
while the predecessor does more than ``rollback_margin`` worse on the window than on the gate's
slice (its ``baseline``); a held probation decides nothing and resumes once the predecessor does as
before again. Losses are "lower is better" (MSE, logloss, 1 - NDCG).

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

    def __post_init__(self) -> None:
        if not self.margin >= 0 or min(self.samples, self.length) < 1:
            raise ValueError(
                f"rollback margin must be >= 0 and its sample counts >= 1, got {self.margin!r}, "
                f"{self.samples!r}, {self.length!r}"
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
    evaluated: int = 0
    held: bool = False
    #: ``[samples, version's loss, predecessor's loss]`` per scored step, oldest first.
    window: list[list[float]] = field(default_factory=list)

    def means(self) -> tuple[int, float, float]:
        """Samples in the window and both versions' sample-weighted mean loss (0s when empty)."""
        samples = int(sum(n for n, _, _ in self.window))
        if not samples:
            return 0, 0.0, 0.0
        new, old = (sum(n * loss[i] for n, *loss in self.window) / samples for i in (0, 1))
        return samples, new, old

    def verdict(self, rule: RollbackRule) -> Verdict:
        """Judge the steps scored so far; a held probation resumes first if the world is back."""
        if self.held and not self.old_worse_too(rule):
            self.held = False
        samples, new, old = self.means()
        if not self.held and samples >= rule.samples and new > old * (1 + rule.margin):
            return Verdict.ROLL_BACK
        return Verdict.TRUSTED if self.evaluated >= rule.length else Verdict.WATCH

    def add(self, samples: int, new: float, old: float, rule: RollbackRule) -> None:
        """One scored step: both versions' mean loss over the same ``samples`` events."""
        self.window.append([samples, new, old])
        self.evaluated += samples
        while sum(n for n, _, _ in self.window[1:]) >= rule.samples:
            self.window.pop(0)

    def hear_alarm(self, rule: RollbackRule) -> bool:
        """A drift alarm: hold while the predecessor does worse too; True when now held."""
        if self.old_worse_too(rule):
            self.held = True
        return self.held

    def old_worse_too(self, rule: RollbackRule) -> bool:
        """The predecessor does more than the margin worse on the window than on the gate's slice:
        the world changed under both versions (not only the new one broke)."""
        samples, _, old = self.means()
        return self.baseline is None or (samples > 0 and old > self.baseline * (1 + rule.margin))

    def evidence(self, metric: str, rule: RollbackRule) -> dict[str, Any]:
        """What a rollback records: both means over the window, the margin and the promotion time."""
        samples, new, old = self.means()
        return {
            "metric": metric,
            "rolled_back_from": self.version,
            "serving": new,
            "predecessor": old,
            "margin": rule.margin,
            "promoted_at": self.since,
            "samples": samples,
        }

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Probation | None:
        """Load a checkpointed probation; ones saved before ``baseline``/``held`` existed load too."""
        if state is None:
            return None
        known = {name: state[name] for name in cls.__dataclass_fields__ if name in state}
        known.setdefault("baseline", None)
        return cls(**known)

"""Lineage of one service's model versions: when each was trained, on which offsets, how it was
validated, and every promotion, rejection and rollback with its reason and evidence.

It is plain data (a checkpoint holds it as is) and answers the per-service value of ``GET /models``:
``{"serving": version, "versions": [{"version", "trained_at", "offsets", "validation", "history"}]}``.
A service without version control answers :func:`single_version` instead, so the shape holds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

ACTIONS = ("promoted", "rolled_back", "rejected")


@dataclass(frozen=True)
class GateEvidence:
    """What a promotion gate compared: both versions' metric on one held-back window.

    ``window`` names the slice (sample count and offsets) neither version trained on. ``serving`` is
    None when nothing serves yet (the first version always passes).
    """

    metric: str
    candidate: float
    serving: float | None
    serving_version: int | None
    margin: float
    window: dict[str, Any]
    #: True for losses (MSE, logloss), False for gains (NDCG): which way "no worse" points.
    lower_is_better: bool = True

    def passes(self) -> bool:
        """No worse than serving by ``margin`` (relative), the gate's one rule for every family.

        A non-finite candidate score (a diverged model) never passes; a finite one replaces a
        non-finite serving score, so one NaN cannot lock the gate shut."""
        if not math.isfinite(self.candidate):
            return False
        if self.serving is None or not math.isfinite(self.serving):
            return True
        if self.lower_is_better:
            return self.candidate <= self.serving * (1 + self.margin)
        return self.candidate >= self.serving * (1 - self.margin)

    def reason(self) -> str:
        if not math.isfinite(self.candidate):
            return f"{self.metric} of the candidate is {self.candidate}: not a finite score"
        if self.serving is None:
            return "first version: nothing serves yet"
        if not math.isfinite(self.serving):
            return f"{self.metric} of the serving version is {self.serving}: any finite score does better"
        better = "<=" if self.lower_is_better else ">="
        worse = ">" if self.lower_is_better else "<"
        sign = "+" if self.lower_is_better else "-"
        relation = better if self.passes() else worse
        return (
            f"{self.metric} {self.candidate:.4f} {relation} serving's {self.serving:.4f} "
            f"{sign} {self.margin:.0%} margin"
        )


@dataclass
class VersionRecord:
    """One version and what happened to it."""

    version: int
    trained_at: float
    #: The last applied offset per ``topic:partition`` of what the version learned from.
    offsets: dict[str, int]
    validation: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class Lineage:
    """The last ``keep`` versions of a service (the serving one always among them)."""

    def __init__(self, keep: int = 20) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 version records")
        self.keep = keep
        self.records: list[VersionRecord] = []
        self.serving: int | None = None

    def add(
        self, version: int, trained_at: float, offsets: dict[str, int], validation: dict[str, Any]
    ) -> VersionRecord:
        """Record a new candidate version (not serving until :meth:`record` promotes it)."""
        record = VersionRecord(version, trained_at, dict(offsets), dict(validation))
        self.records.append(record)
        self._trim()
        return record

    def record(
        self, version: int, action: str, reason: str, evidence: dict[str, Any], at: float | None = None
    ) -> None:
        """Append ``action`` to ``version``'s history; ``promoted`` and ``rolled_back`` change
        which version serves (a rollback names the version that serves again)."""
        if action not in ACTIONS:
            raise ValueError(f"lineage action must be one of {ACTIONS}, got {action!r}")
        target = self.find(version)
        if target is None:
            raise KeyError(
                f"version {version} is not in the lineage (kept: {[r.version for r in self.records]})"
            )
        event = {
            "action": action,
            "at": time.time() if at is None else at,
            "reason": reason,
            "evidence": evidence,
        }
        target.history.append(event)
        if action != "rejected":
            self.serving = version
        self._trim()

    def gate(self, version: int, trained_at: float, offsets: dict[str, int], evidence: GateEvidence) -> bool:
        """Record candidate ``version`` and the gate's decision on it; True when it now serves."""
        body = {  # JSON has no NaN or infinity: a non-finite score is recorded as null
            name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in asdict(evidence).items()
        }
        self.add(version, trained_at, offsets, body)
        passed = evidence.passes()
        self.record(version, "promoted" if passed else "rejected", evidence.reason(), body)
        return passed

    def serve_again(
        self,
        version: int,
        trained_at: float,
        offsets: dict[str, int],
        action: str,
        reason: str,
        evidence: dict[str, Any],
    ) -> None:
        """Record that a kept ``version`` serves again (rolled back to, or served by hand); a version
        that left the last records (trimmed, or older than them) is entered again first."""
        if self.find(version) is None:
            self.add(version, trained_at, offsets, {})
        self.record(version, action, reason, evidence)

    def find(self, version: int) -> VersionRecord | None:
        return next((r for r in self.records if r.version == version), None)

    def _trim(self) -> None:
        while len(self.records) > self.keep:
            oldest = next(r for r in self.records if r.version != self.serving)
            self.records.remove(oldest)

    def body(self) -> dict[str, Any]:
        """This service's value in ``GET /models``."""
        return {"serving": self.serving, "versions": [asdict(r) for r in self.records]}

    def state_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, **self.body()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.keep = int(state["keep"])
        self.serving = state["serving"]
        self.records = [VersionRecord(**r) for r in state["versions"]]


def single_version(version: int, offsets: dict[str, int]) -> dict[str, Any]:
    """``GET /models`` value of a service without version control: its current state as the one version."""
    current = VersionRecord(version, time.time(), dict(offsets), {"note": "this service keeps no versions"})
    return {"serving": version, "versions": [asdict(current)]}

"""A labeling budget: at most ``limit`` tasks per window of N arriving queries or of T seconds.

Windows are counted on the stream itself (query arrivals, or the queries' event time ``ts``), not on
the wall clock, so a replay after a restart makes the same decisions.

Pacing (``pace=True``, per queries only): after k of a window's N queries, at most
``ceil(limit * k / N)`` tasks may have been spent, so the budget cannot go to the first queries of a
window when the threshold lets everything through. That happens at cold start, where every query
scores 0 until the first labels come back: unpaced, a budget of 50 per 100 queries with labels 20
queries late spends 40 tasks on unselected queries; paced, about 20.

Deferring (``defer=N``, paced only): the last N undecided queries wait in a
:class:`~rankers.deferral.CandidateBuffer` for the next slot, where the best of them is taken; the
budget carries them in its state, so a checkpoint keeps what is waiting.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from rankers.deferral import CandidateBuffer

BudgetUnit = Literal["queries", "seconds"]


class LabelingBudget:
    """``limit`` tasks per ``window`` queries (``per="queries"``) or seconds of event time."""

    def __init__(
        self, limit: int, window: float, per: BudgetUnit = "queries", pace: bool = False, defer: int = 0
    ) -> None:
        if per not in ("queries", "seconds"):
            raise ValueError(f"budget per must be 'queries' or 'seconds', got {per!r}")
        if limit < 0 or window <= 0:
            raise ValueError("budget limit must be >= 0 and window > 0")
        if pace and per != "queries":
            raise ValueError("pacing needs a window counted in queries (per='queries')")
        if defer and not pace:
            raise ValueError(
                "deferring needs a paced budget (pace=True): unpaced, a window's slots go at once"
            )
        #: Undecided queries waiting for a slot (None: each query is decided when it arrives).
        self.candidates = CandidateBuffer(defer) if defer else None
        self.limit, self.window, self.per, self.pace = limit, float(window), per, pace
        self.window_start: float | None = None
        self.seen = 0
        self.used = 0

    def arrive(self, ts: float) -> None:
        """Account one arriving query (opens a new window when the current one is over)."""
        position = float(self.seen) if self.per == "queries" else ts
        if self.window_start is None or position >= self.window_start + self.window:
            self.window_start = position if self.per == "seconds" else position - position % self.window
            self.used = 0
        self.seen += 1

    @property
    def left(self) -> int:
        if not self.pace or self.window_start is None:
            return self.limit - self.used
        allowed = math.ceil(self.limit * (self.seen - self.window_start) / self.window - 1e-9)
        return min(self.limit, allowed) - self.used

    def spend(self) -> None:
        if self.left <= 0:
            raise RuntimeError("labeling budget exhausted for this window")
        self.used += 1

    def summary(self) -> dict[str, Any]:
        """The settings and what is left of the current window, for status answers."""
        return {"limit": self.limit, "per": self.per, "window": self.window, "left": self.left}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"window_start": self.window_start, "seen": self.seen, "used": self.used}
        if self.candidates is not None:
            state["candidates"] = self.candidates.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window_start = state["window_start"]
        self.seen, self.used = int(state["seen"]), int(state["used"])
        if self.candidates is not None:
            self.candidates.load_state_dict(state.get("candidates", {"waiting": []}))

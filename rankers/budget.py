"""A labeling budget: at most ``limit`` tasks per window of N arriving queries or of T seconds.

Windows are counted on the stream itself (query arrivals, or the queries' event time ``ts``), not on
the wall clock, so a replay after a restart makes the same decisions.
"""

from __future__ import annotations

from typing import Any, Literal

BudgetUnit = Literal["queries", "seconds"]


class LabelingBudget:
    """``limit`` tasks per ``window`` queries (``per="queries"``) or seconds of event time."""

    def __init__(self, limit: int, window: float, per: BudgetUnit = "queries") -> None:
        if per not in ("queries", "seconds"):
            raise ValueError(f"budget per must be 'queries' or 'seconds', got {per!r}")
        if limit < 0 or window <= 0:
            raise ValueError("budget limit must be >= 0 and window > 0")
        self.limit, self.window, self.per = limit, float(window), per
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
        return self.limit - self.used

    def spend(self) -> None:
        if self.used >= self.limit:
            raise RuntimeError("labeling budget exhausted for this window")
        self.used += 1

    def summary(self) -> dict[str, Any]:
        """The settings and what is left of the current window, for status answers."""
        return {"limit": self.limit, "per": self.per, "window": self.window, "left": self.left}

    def state_dict(self) -> dict[str, Any]:
        return {"window_start": self.window_start, "seen": self.seen, "used": self.used}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window_start = state["window_start"]
        self.seen, self.used = int(state["seen"]), int(state["used"])

"""Per-series rolling windows: the last ``capacity`` observations (values and times) of every series.

A micro-batch's rows of one series are appended in one numpy copy (:meth:`RollingWindow.extend`), not
row by row: the window's old rows followed by the new ones (:class:`Extended`) hold every window the
series passed through, so the service gathers training pairs and look-backs of all series from them in
one copy (:class:`RowStore`), not one per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Extended:
    """A window's rows before a micro-batch followed by the batch's rows, oldest first.

    The window after the k-th new row (0-based) is ``values[k + 1 : k + 1 + capacity]``; it is full
    (a training pair) from start row ``first_full`` on, and holds ``count`` real rows after the last.
    The arrays are fresh copies: nothing mutates them.
    """

    values: np.ndarray
    times: np.ndarray
    capacity: int
    first_full: int
    count: int

    @property
    def full_starts(self) -> np.ndarray:
        """Start rows of the full windows the new rows completed, oldest first (maybe none)."""
        return np.arange(self.first_full, len(self.times) - self.capacity + 1)


class RowStore:
    """The rows of a micro-batch's touched series, concatenated once, so that any set of their windows
    becomes one [B, length, C] array in one gather instead of a copy per window."""

    def __init__(self, parts: dict[str, Extended]) -> None:
        self.values = np.concatenate([p.values for p in parts.values()]) if parts else np.zeros((0, 0))
        self.times = np.concatenate([p.times for p in parts.values()]) if parts else np.zeros(0)
        #: Each series' first row and the row after its last, in the concatenation.
        self.spans: dict[str, tuple[int, int]] = {}
        end = 0
        for series, part in parts.items():
            self.spans[series] = (end, end + len(part.times))
            end += len(part.times)

    def windows(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Values [B, length, C] and times [B, length] of the windows starting at rows ``starts``."""
        rows = starts[:, None] + np.arange(length)
        return self.values[rows], self.times[rows]


class RollingWindow:
    """The newest ``capacity`` rows of one series, oldest first; ``count`` says how many are real."""

    __slots__ = ("count", "times", "values")

    def __init__(self, capacity: int, channels: int) -> None:
        self.values = np.zeros((capacity, channels), np.float32)
        self.times = np.zeros(capacity, np.float64)
        self.count = 0

    @property
    def channels(self) -> int:
        return self.values.shape[1]

    @property
    def last_ts(self) -> float | None:
        return float(self.times[-1]) if self.count else None

    def extend(self, times: np.ndarray, values: np.ndarray) -> Extended:
        """Append rows ``values`` [n, C] at ``times`` [n] (oldest first); the newest ``capacity`` stay."""
        capacity = len(self.times)
        extended = Extended(
            np.concatenate([self.values, np.asarray(values, np.float32).reshape(len(times), -1)]),
            np.concatenate([self.times, times]),
            capacity,
            max(capacity - self.count, 1),
            min(self.count + len(times), capacity),
        )
        self.values = extended.values[-capacity:].copy()
        self.times = extended.times[-capacity:].copy()
        self.count = extended.count
        return extended


class SeriesWindows:
    """A :class:`RollingWindow` per series id, created on a series' first observation."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._windows: dict[str, RollingWindow] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def get(self, series: str) -> RollingWindow | None:
        return self._windows.get(series)

    def extend(self, series: str, times: np.ndarray, values: np.ndarray) -> Extended:
        """Append a series' rows [n, C] of one micro-batch (see :meth:`RollingWindow.extend`)."""
        window = self._windows.get(series)
        if window is None:
            window = self._windows[series] = RollingWindow(self.capacity, values.shape[1])
        return window.extend(times, values)

    def append(self, series: str, ts: float, values: np.ndarray) -> RollingWindow:
        """Append one row."""
        self.extend(series, np.array([ts], np.float64), np.asarray(values, np.float32)[None, :])
        return self._windows[series]

    def last_seen(self) -> dict[str, float]:
        """Each series' newest observation time (what expiry goes by)."""
        return {k: w.last_ts for k, w in self._windows.items() if w.last_ts is not None}

    def drop(self, series: str) -> None:
        self._windows.pop(series, None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "series": {k: (w.values.copy(), w.times.copy(), w.count) for k, w in self._windows.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"saved windows hold {state['capacity']} rows, this service needs {self.capacity}"
            )
        self._windows = {}
        for series, (values, times, count) in state["series"].items():
            window = RollingWindow(self.capacity, values.shape[1])
            window.values[:], window.times[:], window.count = values, times, int(count)
            self._windows[series] = window

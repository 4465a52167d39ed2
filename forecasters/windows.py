"""Per-series rolling windows: the last ``capacity`` observations (values and times) of every series."""

from __future__ import annotations

from typing import Any

import numpy as np


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

    def append(self, ts: float, values: np.ndarray) -> None:
        """Shift one row out at the old end and write ``values`` at the new end."""
        self.values[:-1] = self.values[1:]
        self.times[:-1] = self.times[1:]
        self.values[-1] = values
        self.times[-1] = ts
        self.count = min(self.count + 1, len(self.times))

    def has(self, rows: int) -> bool:
        return self.count >= rows


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

    def append(self, series: str, ts: float, values: np.ndarray) -> RollingWindow:
        window = self._windows.get(series)
        if window is None:
            window = self._windows[series] = RollingWindow(self.capacity, len(values))
        window.append(ts, values)
        return window

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

"""The batch every forecaster consumes: look-back windows, optional targets, calendar marks, series ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def calendar_marks(seconds: np.ndarray) -> np.ndarray:
    """Hour, weekday, day of month and day of year of UTC epoch ``seconds`` (any shape, features last),
    each scaled to [-0.5, 0.5], in numpy: pandas' fixed cost per call (~3 ms) was a fifth of a
    one-pair ``learn`` step. :func:`forecasters.data.calendar_features` is the same for CSV times."""
    moments = np.floor(seconds).astype(np.int64).astype("datetime64[s]")
    days = moments.astype("datetime64[D]")
    hour = (moments - days).astype(np.int64) // 3600
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    day = (days - days.astype("datetime64[M]")).astype(np.int64)  # day of the month - 1
    yday = (days - days.astype("datetime64[Y]")).astype(np.int64)  # day of the year - 1
    features = [hour / 23.0 - 0.5, weekday / 6.0 - 0.5, day / 30.0 - 0.5, yday / 365.0 - 0.5]
    return np.stack(features, axis=-1).astype(np.float32)


@dataclass(frozen=True)
class WindowBatch:
    """``x`` [B, L, C] look-back windows; ``y`` [B, H, C] targets (needed by ``learn``).

    ``marks`` [B, L, F] are calendar features for models that use them; ``keys`` name the series
    of each row so learners with per-series state (OneNet's short-term bias) can find it. With
    ``sequential``, rows that share a key are consecutive steps of that series, oldest first (a
    chunk of a series' training pairs when the service is behind), so such learners can advance
    that state step by step; otherwise every row is an independent step.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    marks: torch.Tensor | None = None
    keys: tuple[str, ...] | None = None
    sequential: bool = False

    def __post_init__(self) -> None:
        if self.x.dim() != 3:
            raise ValueError(f"x must be [batch, length, channels], got shape {tuple(self.x.shape)}")
        if self.y is not None and (self.y.dim() != 3 or self.y.shape[::2] != self.x.shape[::2]):
            raise ValueError(
                f"y must be [batch, horizon, channels] matching x {tuple(self.x.shape)}, "
                f"got {tuple(self.y.shape)}"
            )
        if self.marks is not None and self.marks.shape[:2] != self.x.shape[:2]:
            raise ValueError(
                f"marks must be [batch, length, features] matching x, got {tuple(self.marks.shape)}"
            )
        if self.keys is not None and len(self.keys) != self.x.shape[0]:
            raise ValueError(f"{len(self.keys)} keys for a batch of {self.x.shape[0]}")

    @property
    def target(self) -> torch.Tensor:
        """``y``, or a clear error for a batch that has none (``learn`` needs it)."""
        if self.y is None:
            raise ValueError("this batch has no targets (y); learn needs them")
        return self.y

    def steps(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's step within its series here (0 for the series' first row) and the row holding
        that series' previous step (-1 for none). Unless ``sequential`` (with keys), every row is an
        independent step 0."""
        step = np.zeros(len(self.x), np.int64)
        previous = np.full(len(self.x), -1, np.int64)
        last_row: dict[str, int] = {}
        for row, key in enumerate(self.keys if self.sequential and self.keys else ()):
            if key in last_row:
                previous[row] = last_row[key]
                step[row] = step[last_row[key]] + 1
            last_row[key] = row
        return step, previous

    def to(self, device: torch.device) -> WindowBatch:
        """The same batch with its tensors on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return WindowBatch(self.x.to(device), move(self.y), move(self.marks), self.keys, self.sequential)

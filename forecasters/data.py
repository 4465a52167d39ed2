"""Real series for benchmarks and pretraining: loading, the ETT split, train-statistics scaling, windows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from forecasters.batch import WindowBatch, calendar_marks

DATA_DIR_ENV = "DRIFTLINE_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: ETT online protocol from FSNet/OneNet: rows [0, 2880) train, [2880, 3600) validation, [3600, 14400) online.
ETT_SPLIT = (2880, 3600, 14400)


def data_dir() -> Path:
    """``$DRIFTLINE_DATA_DIR`` or ``../shared/data`` next to the repository root."""
    return Path(os.environ.get(DATA_DIR_ENV, REPO_ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class Series:
    """A multivariate series: ``values`` [T, C] float32 and, when timestamps exist, ``marks`` [T, F]."""

    values: np.ndarray
    marks: np.ndarray | None
    columns: list[str]


def calendar_features(times: pd.DatetimeIndex) -> np.ndarray:
    """Hour, weekday, day of month and day of year, each scaled to [-0.5, 0.5] (Informer's ``timeenc``),
    of wall-clock ``times`` (a timezone-aware index counts in UTC): :func:`calendar_marks`, which the
    service calls per batch on epoch seconds."""
    return calendar_marks(times.values.astype("datetime64[s]").astype(np.int64))


class NoDateColumn(ValueError):
    """A CSV that :func:`load_csv` cannot read: it has no ``date`` column."""


def load_csv(path: Path) -> Series:
    """A CSV with a ``date`` column then numeric channels (the ETT layout)."""
    frame = pd.read_csv(path)
    if "date" not in frame.columns:
        raise NoDateColumn(f"{path}: expected a 'date' column, found {list(frame.columns)[:5]}")
    times = pd.DatetimeIndex(pd.to_datetime(frame.pop("date")))
    return Series(_channels(path, frame), calendar_features(times), list(frame.columns))


def load_dateless(path: Path) -> Series:
    """A CSV without a date column (LSTNet's exchange_rate layout): every column is a channel, no
    calendar marks; a first row that is not all numbers is taken as the header."""
    frame = pd.read_csv(path, header=None)
    if pd.to_numeric(frame.iloc[0], errors="coerce").isna().any():
        frame = pd.read_csv(path)
    else:
        frame.columns = [f"col{i}" for i in range(frame.shape[1])]
    return Series(_channels(path, frame), None, [str(c) for c in frame.columns])


def _channels(path: Path, frame: pd.DataFrame) -> np.ndarray:
    """The frame as [T, C] float32, or a clear error naming the columns that are not numbers."""
    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise ValueError(f"{path}: columns {text[:5]} are not numeric")
    return frame.to_numpy(np.float32)


def load_etth2(path: Path | None = None) -> Series:
    """ETTh2: hourly, 7 channels, OT last."""
    return load_csv(path or data_dir() / "timeseries" / "ETTh2.csv")


def load_exchange_rate(path: Path | None = None) -> Series:
    """Daily exchange rates of 8 countries (no header, no timestamps)."""
    frame = pd.read_csv(path or data_dir() / "timeseries" / "exchange_rate.txt.gz", header=None)
    return Series(frame.to_numpy(np.float32), None, [f"rate{i}" for i in range(frame.shape[1])])


@dataclass(frozen=True)
class Scaler:
    """Per-channel standardisation with statistics from the training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        return cls(values.mean(0), np.maximum(values.std(0), 1e-8))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)


class Windows:
    """Cuts (look-back, horizon) pairs out of one series by forecast origin ``t``.

    The window for origin ``t`` reads rows ``[t - seq_len, t)`` and targets ``[t, t + horizon)``.
    """

    def __init__(self, values: np.ndarray, marks: np.ndarray | None, seq_len: int, horizon: int) -> None:
        self.values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        self.marks = (
            None if marks is None else torch.from_numpy(np.ascontiguousarray(marks, dtype=np.float32))
        )
        self.seq_len = seq_len
        self.horizon = horizon

    def to(self, device: torch.device) -> Windows:
        """Keep the series on ``device``, so batches (and targets) are cut there without a copy per step."""
        self.values = self.values.to(device)
        self.marks = None if self.marks is None else self.marks.to(device)
        return self

    def origins(self, start: int, stop: int) -> np.ndarray:
        """Every origin whose look-back starts at row >= 0 and whose targets end by row ``stop``."""
        return np.arange(max(start, self.seq_len), stop - self.horizon + 1)

    def batch(self, origins: np.ndarray) -> WindowBatch:
        idx = torch.as_tensor(origins, dtype=torch.long)[:, None]
        back = idx + torch.arange(-self.seq_len, 0)
        ahead = idx + torch.arange(self.horizon)
        marks = None if self.marks is None else self.marks[back]
        return WindowBatch(self.values[back], self.values[ahead], marks)

    def batches(
        self, origins: np.ndarray, batch_size: int, rng: np.random.Generator | None = None
    ) -> Iterator[WindowBatch]:
        """``origins`` in batches, shuffled when ``rng`` is given."""
        order = rng.permutation(origins) if rng is not None else origins
        for lo in range(0, len(order), batch_size):
            yield self.batch(order[lo : lo + batch_size])


def ett_windows(series: Series, seq_len: int, horizon: int) -> tuple[Windows, Scaler]:
    """Windows over the first 14,400 rows standardised with train-split statistics."""
    train_end, _, online_end = ETT_SPLIT
    values = series.values[:online_end]
    scaler = Scaler.fit(values[:train_end])
    marks = None if series.marks is None else series.marks[:online_end]
    return Windows(scaler.transform(values), marks, seq_len, horizon), scaler

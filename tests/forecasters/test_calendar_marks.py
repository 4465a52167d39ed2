"""The calendar features: numpy on epoch seconds (per batch in the service), equal to pandas' fields."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecasters.batch import calendar_marks
from forecasters.data import calendar_features


def pandas_fields(times: pd.DatetimeIndex) -> np.ndarray:
    """The definition, spelled with pandas' own calendar accessors (an independent oracle)."""
    return np.stack(
        [
            times.hour / 23.0 - 0.5,
            times.dayofweek / 6.0 - 0.5,
            (times.day - 1) / 30.0 - 0.5,
            (times.dayofyear - 1) / 365.0 - 0.5,
        ],
        axis=1,
    ).astype(np.float32)


def test_numpy_calendar_marks_equal_pandas_calendar_fields_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    seconds = np.concatenate(
        [
            rng.uniform(-2e9, 4e9, 5000),  # 1906..2096: leap years, before the epoch, fractions
            np.arange(0, 400 * 86400, 3600.0),  # every hour of 1970 and a leap 1972
            [951782400.0, 951868799.5, 1709164800.0],  # 2000-02-29, its last half second, 2024-02-29
        ]
    )
    expected = pandas_fields(pd.DatetimeIndex(pd.to_datetime(seconds, unit="s", utc=True)))
    assert np.array_equal(calendar_marks(seconds), expected)


def test_csv_times_get_the_same_features_naive_or_utc() -> None:
    naive = pd.DatetimeIndex(pd.date_range("2016-07-01", periods=24 * 400, freq="h"))
    assert np.array_equal(calendar_features(naive), pandas_fields(naive))
    assert np.array_equal(calendar_features(naive.tz_localize("UTC")), pandas_fields(naive))


def test_marks_keep_the_shape_of_the_times_with_features_last() -> None:
    times = np.arange(12, dtype=np.float64).reshape(3, 4) * 3600.0
    marks = calendar_marks(times)
    assert marks.shape == (3, 4, 4) and marks.dtype == np.float32
    assert np.array_equal(marks[1, 2], calendar_marks(times[1:2, 2:3])[0, 0])

"""The numpy calendar features the service computes per batch equal forecasters.data's (pandas) ones."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecasters.batch import calendar_marks
from forecasters.data import calendar_features


def test_numpy_calendar_marks_equal_the_pandas_features_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    seconds = np.concatenate(
        [
            rng.uniform(-2e9, 4e9, 5000),  # 1906..2096: leap years, before the epoch, fractions
            np.arange(0, 400 * 86400, 3600.0),  # every hour of 1970 and a leap 1972
            [951782400.0, 951868799.5, 1709164800.0],  # 2000-02-29, its last half second, 2024-02-29
        ]
    )
    expected = calendar_features(pd.DatetimeIndex(pd.to_datetime(seconds, unit="s", utc=True)))
    assert np.array_equal(calendar_marks(seconds), expected)


def test_marks_keep_the_shape_of_the_times_with_features_last() -> None:
    times = np.arange(12, dtype=np.float64).reshape(3, 4) * 3600.0
    marks = calendar_marks(times)
    assert marks.shape == (3, 4, 4) and marks.dtype == np.float32
    assert np.array_equal(marks[1, 2], calendar_marks(times[1:2, 2:3])[0, 0])

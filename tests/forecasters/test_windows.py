"""Rolling windows appended a micro-batch at a time, and the row store that gathers their windows."""

from __future__ import annotations

import numpy as np
import pytest

from forecasters.windows import RollingWindow, RowStore, SeriesWindows

CAPACITY = 4


def rows(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Times ``start..start+count`` and two channels that encode the row number."""
    index = np.arange(start, start + count)
    return index.astype(np.float64), np.stack([index, -index], 1).astype(np.float32)


def window_after(row: int) -> np.ndarray:
    """The full window whose newest row is ``row``."""
    return rows(row - CAPACITY + 1, CAPACITY)[1]


@pytest.mark.parametrize("split", [[9], [1] * 9, [2, 5, 2], [3, 1, 5]])
def test_extending_by_batches_equals_appending_row_by_row(split: list[int]) -> None:
    batched, single = RollingWindow(CAPACITY, 2), RollingWindow(CAPACITY, 2)
    start = 0
    for size in split:
        batched.extend(*rows(start, size))
        start += size
    times, values = rows(0, 9)
    for ts, row in zip(times, values, strict=True):
        single.extend(np.array([ts]), row[None, :])
    assert np.array_equal(batched.values, single.values) and np.array_equal(batched.times, single.times)
    assert batched.count == single.count == CAPACITY and batched.last_ts == 8.0


def test_each_new_row_that_fills_the_window_yields_its_full_window_in_order() -> None:
    window = RollingWindow(CAPACITY, 2)
    first = window.extend(*rows(0, 2))  # 2 rows: nothing full yet
    assert len(first.full_starts) == 0 and first.count == 2
    second = window.extend(*rows(2, 5))  # rows 2..6: full after rows 3, 4, 5, 6
    full = [second.values[s : s + CAPACITY] for s in second.full_starts]
    assert np.array_equal(np.stack(full), np.stack([window_after(r) for r in (3, 4, 5, 6)]))
    assert second.count == CAPACITY and window.count == CAPACITY


def test_the_rows_handed_out_do_not_change_when_the_window_moves_on() -> None:
    window = RollingWindow(CAPACITY, 2)
    handed_out = window.extend(*rows(0, CAPACITY))
    kept = handed_out.values.copy()
    window.extend(*rows(CAPACITY, 3))
    assert np.array_equal(handed_out.values, kept)


def test_the_row_store_gathers_windows_of_several_series_in_one_array() -> None:
    windows = SeriesWindows(CAPACITY)
    windows.extend("a", *rows(0, 3))
    parts = {"a": windows.extend("a", *rows(3, 3)), "b": windows.extend("b", *rows(10, 5))}
    store = RowStore(parts)
    a_first, b_first = store.spans["a"][0], store.spans["b"][0]
    starts = np.concatenate([a_first + parts["a"].full_starts, b_first + parts["b"].full_starts])
    values, times = store.windows(starts, CAPACITY)
    expected = [window_after(r) for r in (3, 4, 5, 13, 14)]  # a: full from row 3, b: from its 4th row
    assert np.array_equal(values, np.stack(expected))
    assert np.array_equal(times[:, -1], [3, 4, 5, 13, 14])
    assert store.spans["b"][1] == len(store.times)


def test_a_window_appended_one_row_at_a_time_reports_itself() -> None:
    windows = SeriesWindows(CAPACITY)
    window = windows.append("a", 1.0, np.array([1.0, 2.0], np.float32))
    assert window is windows.get("a") and window.count == 1 and window.last_ts == 1.0
    assert np.array_equal(window.values[-1], [1.0, 2.0])

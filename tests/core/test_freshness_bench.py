"""The freshness bench's arithmetic: when an event counts as learned or served, and the max rate."""

from __future__ import annotations

import numpy as np
import pytest

from bench.freshness import drain_rate, first_reached


def test_an_event_is_reached_by_the_first_answer_after_its_send_that_covers_it() -> None:
    times = np.array([10.0, 10.1, 10.2, 10.3])
    counts = np.array([0.0, 2.0, 2.0, 5.0])
    sent = np.array([9.95, 9.96, 10.15, 10.25])
    targets = np.array([1.0, 3.0, 2.0, 5.0])  # position + 1
    delays = first_reached(times, counts, sent, targets)
    # event 2 is covered at 10.1, but was sent after it: its first answer is 10.2, not 10.1
    np.testing.assert_allclose(delays, [0.15, 0.34, 0.05, 0.05])


def test_an_answer_that_goes_down_does_not_undo_what_was_reached() -> None:
    """A served version can be rolled back; what was reached once stays reached (running maximum)."""
    delays = first_reached(
        np.array([1.0, 2.0, 3.0]), np.array([4.0, 1.0, 4.0]), np.array([0.5]), np.array([3.0])
    )
    np.testing.assert_allclose(delays, [0.5])


def test_an_event_no_answer_reaches_is_nan() -> None:
    delays = first_reached(
        np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([0.0, 2.5]), np.array([3.0, 1.0])
    )
    assert np.isnan(delays).all()
    assert np.isnan(first_reached(np.zeros(0), np.zeros(0), np.array([0.0]), np.array([1.0]))).all()


def test_the_drain_rate_leaves_the_first_batch_and_start_up_out() -> None:
    # nothing for 3 s (start-up), a first batch of 500, then 1,000 more in 2 s
    times = np.array([0.0, 1.0, 3.0, 4.0, 5.0])
    counts = np.array([0.0, 0.0, 500.0, 1000.0, 1500.0])
    assert drain_rate(times, counts) == pytest.approx(500.0)


@pytest.mark.parametrize(
    "times, counts",
    [(np.array([0.0, 1.0]), np.array([0.0, 0.0])), (np.array([0.0, 1.0]), np.array([0.0, 7.0]))],
)
def test_a_rate_needs_two_answers_with_applied_events(times: np.ndarray, counts: np.ndarray) -> None:
    with pytest.raises(ValueError, match="two answers"):
        drain_rate(times, counts)

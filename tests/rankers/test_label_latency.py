"""The label-latency bench's matching of submissions to the learned count (``bench/label_latency.py``)."""

from __future__ import annotations

import numpy as np

from bench.label_latency import learn_delays


def test_each_label_waits_for_the_first_poll_after_it_whose_done_count_covers_it():
    submitted = [10.0, 10.5, 11.0]
    polls = [10.2, 10.6, 11.1, 11.4, 12.0]
    done = [0, 1, 1, 2, 3]  # first label learned by 10.6, the second by 11.4, the third by 12.0
    np.testing.assert_allclose(learn_delays(submitted, polls, done), [0.6, 0.9, 1.0])


def test_a_poll_before_the_submission_does_not_count():
    # done reached 2 before the second label was even sent: it still needs a poll after its own 202
    delays = learn_delays([1.0, 2.0], [1.5, 1.8, 2.5, 3.0], [2, 2, 2, 2])
    np.testing.assert_allclose(delays, [0.5, 0.5])


def test_a_label_no_poll_covers_is_nan():
    delays = learn_delays([1.0, 2.0], [1.5, 2.5], [1, 1])
    assert delays[0] == 0.5 and np.isnan(delays[1])

"""The demo replay's backpressure (bench/lifecycle_demo.Backpressure) against a made-up worker count."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from bench.lifecycle_demo import Backpressure


class Worker:
    """A worker's applied-events count as the replay reads it: ``reads`` gives each read in turn
    (None: no answer in time), then the last one again."""

    def __init__(self, *reads: float | None) -> None:
        self.reads, self.asked = list(reads), 0

    def __call__(self) -> float | None:
        self.asked += 1
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]


def held(
    worker: Callable[[], float | None], max_ahead: int, stop: threading.Event | None = None
) -> Backpressure:
    hold = Backpressure(worker, max_ahead, stop or threading.Event())
    hold.POLL_S = 0.01
    return hold


def test_the_first_chunk_waits_for_the_worker_to_answer_and_counts_from_what_it_had_applied() -> None:
    worker = Worker(None, 5_000.0, 5_000.0, 5_900.0)
    hold = held(worker, 1_000)
    assert hold.ready(0, 250)
    assert worker.asked == 2  # the unanswered read, then the base: 5,000 applied before the replay
    assert hold.ready(750, 250)  # 1,000 ahead of 0 applied since: allowed without asking again
    assert worker.asked == 2
    assert hold.ready(1_000, 250)  # 1,250 would be ahead of 0: waits for the worker to reach 900 since
    assert worker.asked == 4


def test_a_worker_that_applies_nothing_holds_the_replay_until_stopped() -> None:
    stop = threading.Event()
    worker = Worker(0.0)
    hold = held(worker, 100, stop)
    assert hold.ready(0, 100)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    assert not hold.ready(100, 1)
    timer.join()
    assert worker.asked > 2
    assert hold.held_s >= 0.15  # the wait is counted


def test_a_replay_stopped_before_it_began_sends_nothing() -> None:
    stop = threading.Event()
    stop.set()
    assert not held(Worker(0.0), 100, stop).ready(0, 25)


def test_max_ahead_must_allow_an_event() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Backpressure(Worker(0.0), 0, threading.Event())

"""A paced replay keeps its rate over the run, and sends what is due in bursts the producer batches."""

from __future__ import annotations

import time
from typing import Any

from streams.producer import PACE_TICK_S, send_all
from streams.schemas import Observation


class _Future:
    def add_errback(self, callback: Any) -> None:
        """Nothing fails here."""


class _SendTimes:
    """Stands in for the producer only to note when each record was handed to it (no broker involved:
    what is under test is the pacing loop)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> _Future:
        self.times.append(time.monotonic())
        return _Future()

    def flush(self) -> None:
        """Nothing is buffered."""


def test_paced_replay_sends_in_ticks_at_the_asked_rate() -> None:
    rate, count = 200.0, 240
    producer = _SendTimes()
    records = [Observation(series="s", ts=float(i), values=[1.0]) for i in range(count)]
    report = send_all(producer, "observations", records, rate=rate, progress=False)  # type: ignore[arg-type]
    assert report.sent == count
    # The whole replay takes as long as the rate says (the last burst leaves up to a tick early).
    assert (count - 1) / rate - PACE_TICK_S - 0.01 <= report.seconds <= (count - 1) / rate + 0.5
    # Records leave in bursts: gaps of a tick between them, none within one.
    gaps = [b - a for a, b in zip(producer.times, producer.times[1:], strict=False)]
    bursts = [g for g in gaps if g > PACE_TICK_S / 2]
    assert len(bursts) <= report.seconds / PACE_TICK_S + 1
    assert len(bursts) >= (count / rate) / PACE_TICK_S - 2
    # Never ahead of the schedule by more than a tick: the i-th record leaves after i / rate - tick
    # (counted from the first send, which leaves a few ms after the replay's own clock starts).
    start = producer.times[0]
    assert all(t - start >= i / rate - PACE_TICK_S - 0.02 for i, t in enumerate(producer.times))

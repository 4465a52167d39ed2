"""Which labels the lifecycle demo corrupts (bench/lifecycle_demo.Injection.apply), on made-up events."""

from __future__ import annotations

import pytest

from bench.lifecycle_demo import Injection, Timeline
from streams.schemas import Impression


def event(index: int, clicked: int) -> Impression:
    return Impression(id=f"i{index}", ts=float(index), categorical={"user": "u1"}, clicked=clicked)


def labels(injection: Injection, timeline: Timeline, clicked: list[int], first: int = 0) -> list[int]:
    """The labels events ``first``, ``first + 1``, ... (real labels ``clicked``) go out with."""
    sent = [injection.apply(first + i, event(first + i, c), timeline, now=1.0) for i, c in enumerate(clicked)]
    return [int(e.clicked or 0) for e in sent]


def stretch(label: int | None) -> tuple[Injection, Timeline]:
    """An injection armed at v1 whose stretch runs now: v2 was promoted since."""
    injection, timeline = Injection(start=10, label=label), Timeline(newest=1)
    assert labels(injection, timeline, [1], first=10) == [1]  # arms on v1: no fresh version yet
    timeline.newest = 2
    return injection, timeline


def test_the_stretch_flips_each_label_by_default_and_sets_every_one_to_the_label_given() -> None:
    real = [1, 0, 1, 1, 0]
    assert labels(*stretch(None), real, first=11) == [0, 1, 0, 0, 1]
    assert labels(*stretch(0), real, first=11) == [0, 0, 0, 0, 0]
    assert labels(*stretch(1), real, first=11) == [1, 1, 1, 1, 1]


def test_events_before_the_stretch_and_after_it_keep_their_labels() -> None:
    injection, timeline = stretch(0)
    assert labels(injection, Timeline(newest=2), [1, 1], first=0) == [1, 1]  # before ``start``
    assert labels(injection, timeline, [1], first=11) == [0]
    timeline.newest = 3  # the next promotion ends the stretch: v3 learned it
    assert labels(injection, timeline, [1, 0], first=12) == [1, 0]
    assert (injection.corrupting, injection.learned) == (2, 3)


def test_a_lasting_shift_flips_labels_whatever_the_stretch_sets() -> None:
    injection = Injection(start=10, shift_at=20, label=0)
    assert labels(injection, Timeline(newest=5), [1, 0], first=20) == [0, 1]


@pytest.mark.parametrize("label", [2, -1])
def test_a_stretch_label_other_than_0_or_1_is_refused(label: int) -> None:
    with pytest.raises(ValueError, match="must be 0 or 1"):
        Injection(start=10, label=label)

"""settle_heap: garbage made before it is collected, survivors are frozen, later garbage still goes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.heap import settle_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A reference cycle nobody holds: only the cyclic collector frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_settle_heap_collects_first_then_freezes_the_survivors() -> None:
    before = cycle()
    kept = Node()
    frozen = settle_heap()
    assert before() is None, "garbage alive at the call is collected, not frozen for good"
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects()), "a survivor moved to the permanent generation"


@pytest.mark.usefixtures("unfrozen")
def test_garbage_made_after_settling_is_still_collected() -> None:
    settle_heap()
    later = cycle()
    gc.collect()
    assert later() is None


@pytest.mark.usefixtures("unfrozen")
def test_a_worker_widens_the_young_generation_and_a_replica_keeps_it() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_threshold() == before
        settle_heap(50_000)
        assert gc.get_threshold() == (50_000, *before[1:])
    finally:
        gc.set_threshold(*before)

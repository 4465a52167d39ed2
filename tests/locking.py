"""Hold a service's lock from another thread, as the worker does while it applies a batch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TypeVar

from streams.service import ModelService

T = TypeVar("T")


@contextmanager
def lock_held_elsewhere(service: ModelService, timeout_s: float = 10.0) -> Iterator[None]:
    """Inside the block another thread holds ``service.lock`` (released on exit)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with service.lock:
            held.set()
            release.wait(timeout_s)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(5), "the lock was never taken"
        yield
    finally:
        release.set()
        thread.join()


def returns_within(deadline_s: float, fn: Callable[[], T]) -> T:
    """``fn()``, run in another thread; fails the test if it has not returned after ``deadline_s``.

    Inside :func:`lock_held_elsewhere` a call that waits on the held lock does not hang: it returns
    late, once the holder gives up, and a test that only checks its answer still passes. Give it a
    deadline shorter than the hold so that waiting on the lock fails instead.
    """
    answer: Future[T] = Future()

    def run() -> None:
        try:
            answer.set_result(fn())
        except BaseException as error:  # handed to the test thread, which re-raises it
            answer.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    try:
        return answer.result(timeout=deadline_s)
    except TimeoutError:
        raise AssertionError(f"no answer within {deadline_s} s: did it wait on the lock?") from None

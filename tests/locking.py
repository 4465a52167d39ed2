"""Hold a service's lock from another thread, as the worker does while it applies a batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from streams.service import ModelService


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

"""Giving freed heap memory back to the operating system after a checkpoint (glibc; elsewhere a no-op).

A checkpoint copies the whole state (the new restore point) and serializes it: for the 26+13-field
CTR model, a few hundred MB that live for a moment. glibc serves blocks that large from its heaps
once its dynamic mmap threshold has risen (after the first large block is freed), and free pages
in the middle of a heap stay resident: a ctr worker's RSS rose 300-400 MB, one step per
checkpoint. ``malloc_trim(0)`` hands the free pages of every arena back.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_heap() -> bool:
    """Return the heap's free pages to the system; True if any were released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False

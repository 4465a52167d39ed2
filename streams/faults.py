"""Deterministic fault injection, so tests can crash a worker at an exact step of the protocol.

``DRIFTLINE_CRASH_AT=<step>[@N]`` makes the process SIGKILL itself the N-th time (default 1st) it
reaches ``<step>``; the steps are :data:`CRASH_POINTS`. ``DRIFTLINE_FAULT_DIR=<dir>`` arms file
switches a test flips while the worker runs: ``<dir>/disk-full`` present makes checkpoint writes
fail with ENOSPC, as a full disk would. Unset (the default), every hook is a no-op.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

CRASH_POINTS = (
    "after_apply",  # state changed in memory, outputs not sent
    "after_send",  # outputs acknowledged by the broker, no checkpoint yet
    "mid_checkpoint",  # half of the state file written
    "between_version_and_current",  # the new version is in place, CURRENT still names the old one
    "after_checkpoint",  # checkpoint durable, offsets not committed to Kafka
)

_reached: dict[str, int] = {}


def _crash_spec() -> tuple[str, int] | None:
    raw = os.environ.get("DRIFTLINE_CRASH_AT", "").strip()
    if not raw:
        return None
    step, _, count = raw.partition("@")
    if step not in CRASH_POINTS:
        raise ValueError(f"DRIFTLINE_CRASH_AT={raw!r}: unknown step; known: {', '.join(CRASH_POINTS)}")
    return step, int(count or 1)


def crash_point(step: str) -> None:
    """SIGKILL this process if ``DRIFTLINE_CRASH_AT`` names ``step`` and its count is reached."""
    spec = _crash_spec()
    if spec is None or spec[0] != step:
        return
    _reached[step] = _reached.get(step, 0) + 1
    if _reached[step] >= spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def check_disk(path: Path) -> None:
    """Raise ENOSPC for a write under ``path`` while the disk-full switch is on."""
    switches = os.environ.get("DRIFTLINE_FAULT_DIR")
    if switches and (Path(switches) / "disk-full").exists():
        raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))

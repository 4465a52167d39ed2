"""Machine facts printed beside every timing, importable with no dependency (a bare GPU box has none)."""

from __future__ import annotations

import os


def load() -> str:
    """The 1/5/15-minute load averages, printed beside every timing (the machine is shared)."""
    return "load {:.2f} {:.2f} {:.2f} ({} cores)".format(*os.getloadavg(), os.cpu_count())

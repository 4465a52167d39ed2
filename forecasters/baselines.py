"""Baselines every figure is compared with: last value, seasonal naive and an online DLinear."""

from __future__ import annotations

import torch
from torch import nn

from forecasters.batch import WindowBatch
from forecasters.learner import NetForecaster, StatelessForecaster, mse_loss


class LastValue(StatelessForecaster):
    """Repeats the last observed value over the horizon."""

    name = "last-value"

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon

    def predict(self, batch: WindowBatch) -> torch.Tensor:
        return batch.x[:, -1:, :].expand(-1, self.horizon, -1).clone()


class SeasonalNaive(StatelessForecaster):
    """Repeats the last full season: step ``h`` copies the value ``period`` steps earlier (cyclically)."""

    name = "seasonal-naive"

    def __init__(self, horizon: int, period: int) -> None:
        if period < 1:
            raise ValueError("period must be >= 1")
        self.horizon = horizon
        self.period = period

    def predict(self, batch: WindowBatch) -> torch.Tensor:
        length = batch.x.shape[1]
        if self.period > length:
            raise ValueError(f"period {self.period} is longer than the look-back window {length}")
        steps = length - self.period + torch.arange(self.horizon) % self.period
        return batch.x[:, steps, :]


class DLinearNet(nn.Module):
    """DLinear: moving-average trend + remainder, each mapped L -> H by a linear layer shared by channels.

    With ``subtract_last`` the window is first shifted by its last value (NLinear), which keeps the
    model honest under the level shifts that online data brings.
    """

    def __init__(self, seq_len: int, horizon: int, kernel: int = 25, subtract_last: bool = True) -> None:
        super().__init__()
        self.kernel = kernel
        self.subtract_last = subtract_last
        self.trend = nn.Linear(seq_len, horizon)
        self.remainder = nn.Linear(seq_len, horizon)

    def forward(self, x: torch.Tensor, marks: torch.Tensor | None = None) -> torch.Tensor:
        last = x[:, -1:, :] if self.subtract_last else torch.zeros_like(x[:, -1:, :])
        z = (x - last).transpose(1, 2)  # [B, C, L]
        pad = (self.kernel - 1) // 2
        padded = torch.cat(
            [z[..., :1].expand(-1, -1, pad), z, z[..., -1:].expand(-1, -1, self.kernel - 1 - pad)], -1
        )
        trend = padded.unfold(-1, self.kernel, 1).mean(-1)
        out = self.trend(trend) + self.remainder(z - trend)
        return out.transpose(1, 2) + last


class DLinear(NetForecaster):
    """DLinear trained online with MSE, one AdamW step per batch."""

    name = "dlinear"

    def __init__(
        self, seq_len: int, horizon: int, lr: float = 1e-3, device: torch.device | None = None
    ) -> None:
        super().__init__(DLinearNet(seq_len, horizon), horizon, mse_loss, lr, device=device)

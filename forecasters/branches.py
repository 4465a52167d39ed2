"""The two OneNet branches: a channel-independent MLP over each variable's window (cross-time) and a
compact dilated TCN over all variables plus calendar marks (cross-variable, FSNet/TS2Vec backbone).

Both branches shift each window by its last value and add it back to the forecast (NLinear's trick,
not in OneNet): without it they trail level shifts for hundreds of online steps on ETTh2.

Scaled down for 2 CPU cores. Cross-time: OneNet embeds each variable's window with Linear(L -> 64)
and runs a depth-10 TCN along the variable axis; here the same embedding feeds a residual MLP per
variable, which is strictly channel-independent and ~250x cheaper than a TCN along time per variable.
Cross-variable TCN: depth 4 (dilations 1..8, receptive field 61 >= the 60-step window) instead of 10,
hidden 32 instead of 64, representation 64 instead of 320, no FSNet adapters or associative memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SamePadConv(nn.Module):
    """A dilated 1-d conv whose output has the input's length."""

    def __init__(self, inputs: int, outputs: int, kernel: int, dilation: int) -> None:
        super().__init__()
        field = (kernel - 1) * dilation + 1
        self.conv = nn.Conv1d(inputs, outputs, kernel, padding=field // 2, dilation=dilation)
        self.trim = 1 if field % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out[..., : out.shape[-1] - self.trim]


class ConvBlock(nn.Module):
    """Two GELU + dilated conv layers with a residual (1x1 projection when widths differ)."""

    def __init__(self, inputs: int, outputs: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = SamePadConv(inputs, outputs, kernel, dilation)
        self.conv2 = SamePadConv(outputs, outputs, kernel, dilation)
        self.project = nn.Conv1d(inputs, outputs, 1) if inputs != outputs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.project is None else self.project(x)
        return self.conv2(F.gelu(self.conv1(F.gelu(x)))) + residual


class DilatedTCN(nn.Module):
    """[N, T, inputs] -> representation of the last step [N, repr_dim]."""

    def __init__(
        self, inputs: int, hidden: int = 32, repr_dim: int = 64, depth: int = 4, kernel: int = 3
    ) -> None:
        super().__init__()
        self.input_fc = nn.Linear(inputs, hidden)
        widths = [hidden] * depth + [repr_dim]
        self.blocks = nn.Sequential(
            *(
                ConvBlock(w_in, w_out, kernel, 2**i)
                for i, (w_in, w_out) in enumerate(zip([hidden, *widths[:-1]], widths, strict=True))
            )
        )
        self.repr_dim = repr_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input_fc(x).transpose(1, 2))[..., -1]


class CrossTimeMLP(nn.Module):
    """Channel-independent branch: each variable's window -> Linear(L -> hidden) -> residual MLP -> H."""

    def __init__(self, seq_len: int, horizon: int, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(seq_len, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU()) for _ in range(depth)
        )
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor, marks: torch.Tensor | None = None) -> torch.Tensor:
        last = x[:, -1:, :]
        z = self.embed((x - last).transpose(1, 2))  # [B, C, hidden]
        for block in self.blocks:
            z = z + block(z)
        return self.head(z).transpose(1, 2) + last


class CrossVariableTCN(nn.Module):
    """Cross-variable branch: all variables (plus calendar marks) in one TCN, head to C x H."""

    def __init__(
        self,
        channels: int,
        horizon: int,
        marks: int = 0,
        hidden: int = 32,
        repr_dim: int = 64,
        depth: int = 4,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.marks = marks
        self.encoder = DilatedTCN(channels + marks, hidden, repr_dim, depth)
        self.head = nn.Linear(repr_dim, channels * horizon)

    def forward(self, x: torch.Tensor, marks: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.channels:
            raise ValueError(
                f"cross-variable branch was built for {self.channels} channels, got {x.shape[-1]}"
            )
        last = x[:, -1:, :]
        x = x - last
        if self.marks:
            if marks is None or marks.shape[-1] != self.marks:
                raise ValueError(f"cross-variable branch needs {self.marks} calendar features per step")
            x = torch.cat([x, marks], -1)
        return self.head(self.encoder(x)).reshape(x.shape[0], -1, self.channels) + last

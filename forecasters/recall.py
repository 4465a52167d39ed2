"""A per-(horizon step, variable) correction from a series' latest revealed residual, fitted online.

The forecast becomes ``base + a * r``, ``r`` the residual (truth - base forecast) of the window this
series learned last, and ``a`` the least-squares coefficient of the next window's residual on ``r``,
``sum(r * e) / sum(r * r)`` over exponentially weighted past steps, clipped to [0, 1].

Why: under the paper protocol (FSNet/OneNet) the window learned last is the one just forecast, so its
residual at lead h describes target rows that the next window's lead h is one step past: the residual
is nearly the same and ``a`` fits close to 1. This is the look-ahead that the reference's associative
memory exploits (docs/forecasters.md, "Paper protocol: closing the gap"). Under delayed labels the
window learned last ended H - 1 steps before the next forecast, ``a`` is fitted on consecutive learned
windows but applied H steps later, so this is a paper-protocol variant, never the service's default.

A batch of several rows without series keys (warm-up, validation) holds unrelated windows: none of
them has a revealed predecessor, so it neither uses nor changes this state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from forecasters.batch import WindowBatch

_SINGLE_SERIES = ""


def streams(batch: WindowBatch) -> bool:
    """True when the batch's rows are steps of named series (keys), or one step of the unnamed one."""
    return batch.keys is not None or batch.x.shape[0] == 1


class RevealedResidual:
    """EMA moments of r*e and r*r per [H, C] (``a`` = their ratio in [0, 1]) and each series' last r."""

    def __init__(self, horizon: int, channels: int, decay: float = 0.99) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        #: Equal starting moments: ``a`` starts at 1 and is soon data-driven.
        self.cross = torch.ones(horizon, channels)
        self.power = torch.ones(horizon, channels)
        #: Each series' latest revealed residual: {series: [H, C] float32}.
        self.last: dict[str, np.ndarray] = {}

    def coefficient(self) -> torch.Tensor:
        """``a`` [H, C]: r*e / r*r clipped to [0, 1]."""
        return (self.cross / self.power.clamp(min=1e-12)).clamp(0.0, 1.0)

    def stored(self, batch: WindowBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's stored residual [B, H, C] (zero where none) and whether there was one [B]."""
        rows, (horizon, channels) = batch.x.shape[0], self.cross.shape
        residual = np.zeros((rows, horizon, channels), np.float32)
        known = np.zeros(rows, bool)
        if streams(batch):
            for row, key in enumerate(batch.keys or (_SINGLE_SERIES,)):
                if key in self.last:
                    residual[row], known[row] = self.last[key], True
        return torch.from_numpy(residual).to(batch.x.device), torch.from_numpy(known).to(batch.x.device)

    def correction(self, batch: WindowBatch) -> torch.Tensor:
        """``a * r`` for every row of ``batch`` [B, H, C] (zero for a row with no stored residual)."""
        residual, _ = self.stored(batch)
        return self.coefficient().to(residual.device) * residual

    def previous(
        self, batch: WindowBatch, residual: torch.Tensor, previous: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's predecessor's residual: the row ``previous`` names in this batch (a chunk of a
        series' steps), else the stored one; [B, H, C] and whether there was one [B]."""
        stored, known = self.stored(batch)
        inside = torch.from_numpy(previous).to(residual.device)
        in_batch = (inside >= 0)[:, None, None]
        earlier = torch.where(in_batch, residual[inside.clamp(min=0)], stored)
        return earlier, known | (inside >= 0)

    @staticmethod
    def moments(earlier: torch.Tensor, residual: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Per row [B, 3, H, C]: r*e, r*r and whether the row had a predecessor (a step's mean of it is
        the share of its rows that count), zero for rows without one."""
        weight = known.to(residual.dtype)[:, None, None]
        stats = torch.stack([earlier * residual, earlier.square()], 1) * weight[:, None]
        return torch.cat([stats, weight.expand_as(residual)[:, None]], 1)

    def update(self, step: torch.Tensor) -> None:
        """One step's mean :meth:`moments` over its rows [3, H, C]; a step with no predecessor is skipped."""
        step = step.detach().cpu()
        share = float(step[2, 0, 0])
        if share == 0:
            return
        for name, value in zip(("cross", "power"), step[:2] / share, strict=True):
            setattr(self, name, self.decay * getattr(self, name) + (1 - self.decay) * value)

    def remember(self, batch: WindowBatch, residual: torch.Tensor) -> None:
        """Keep each series' latest residual (the last row of each key), unless the rows are unrelated."""
        if not streams(batch):
            return
        values = residual.detach().cpu().numpy()
        for key, row in zip(batch.keys or (_SINGLE_SERIES,), values, strict=True):
            self.last[key] = row

    def state_dict(self) -> dict[str, Any]:
        return {
            "cross": self.cross.clone(),
            "power": self.power.clone(),
            "decay": self.decay,
            "last": dict(self.last),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cross, self.power = state["cross"].clone(), state["power"].clone()
        self.decay, self.last = state["decay"], dict(state["last"])

"""A per-(horizon step, variable) gain on the forecast's departure from the last value, fitted online.

The forecast is ``last + g * (mix - last)``; ``g`` is the least-squares shrinkage of the model's
residual towards the truth's, ``sum(r * d) / sum(r * r)`` over exponentially weighted past steps
(r = mix - last, d = y - last), clipped to [0, 1]. Each row's miss d - r is first clipped to
``MISS_CLIP`` times its running RMS, so one outlier target (ETTh2's LULL) cannot swing g for a hundred
steps.
Where the model has no skill beyond the last value at some lead (a random walk, or far ahead) g falls
towards 0 and the forecast towards last-value; where it has skill g stays near 1. It learns from the
delayed signal itself: every learned window.

On a random walk the ratio's noise alone keeps g above 0 about half the time (clipped below at 0, so
on average above), which costs the forecast r's variance. ``prior`` makes it a ridge regression with a
zero-mean prior on g: the noise term of the denominator is the miss variance over the effective number
of samples, so g needs evidence of skill, not a lucky stretch, to move off 0 (see :meth:`ridge`).
"""

from __future__ import annotations

from typing import Any

import torch

#: Misses beyond this many running RMS are clipped. 3 biased g upwards on ETTh2's heavy-tailed misses
#: (delayed H=48, first 1,000 steps: 1.013 +- .051 against .758 unclipped); 10 matched unclipped (.755).
MISS_CLIP = 10.0
#: The default ``prior``: 0 (plain least squares). 8 brings exchange_rate's delayed H=24 MSE from 1.087x
#: to 1.017x last-value (first 1,000 steps) but costs ETTh2 at H=48 (0.60x -> 0.79x) and fails
#: ``test_one_outlier_window_leaves_no_lasting_mark``: one clipped outlier miss doubles the miss variance,
#: so the ridge, and last-value's share, for a hundred steps. docs/forecasters.md has the measurements.
GAIN_PRIOR = 0.0


class ResidualGain:
    """EMA moments of r*d, r*r and the clipped miss per [H, C]; ``gain()`` = r*d / r*r clipped to [0, 1]."""

    def __init__(self, horizon: int, channels: int, decay: float = 0.99, prior: float = 0.0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if prior < 0:
            raise ValueError(f"prior must be >= 0, got {prior}")
        self.decay = decay
        self.prior = prior
        #: Equal starting moments: g starts at 1 (the model's own forecast) and is soon data-driven.
        self.cross = torch.ones(horizon, channels)
        self.power = torch.ones(horizon, channels)
        self.miss = torch.ones(horizon, channels)

    def gain(self) -> torch.Tensor:
        """r*d / (r*r + ridge): the ridge is the miss variance over the effective number of samples, times
        ``prior`` (the ridge regression of d on r with a zero-mean prior on g)."""
        return (self.cross / (self.power + self.ridge()).clamp(min=1e-12)).clamp(0.0, 1.0)

    def ridge(self) -> torch.Tensor:
        """prior * miss / n_eff, n_eff = 1 / (1 - decay) EMA samples over lead h + 1 (consecutive windows
        share h of the h + 1 moves that make their lead-h target, so lead h's samples overlap that much)."""
        leads = torch.arange(1, self.miss.shape[0] + 1, dtype=self.miss.dtype)[:, None]
        return self.prior * (1 - self.decay) * leads * self.miss

    def moments(self, residual: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        """Per row [B, 3, H, C]: r*d, r*r and (d - r)^2 with d - r clipped to MISS_CLIP x its running RMS."""
        bound = MISS_CLIP * self.miss.sqrt().to(residual.device)
        miss = torch.maximum(torch.minimum(wanted - residual, bound), -bound)
        return torch.stack([residual * (residual + miss), residual.square(), miss.square()], 1)

    def update(self, step: torch.Tensor) -> None:
        """One step's mean :meth:`moments` over its rows, [3, H, C]."""
        step = step.detach().cpu()
        for name, value in zip(("cross", "power", "miss"), step, strict=True):
            setattr(self, name, self.decay * getattr(self, name) + (1 - self.decay) * value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "cross": self.cross.clone(),
            "power": self.power.clone(),
            "miss": self.miss.clone(),
            "decay": self.decay,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cross, self.power = state["cross"].clone(), state["power"].clone()
        self.miss, self.decay = state["miss"].clone(), state["decay"]

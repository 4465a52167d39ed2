"""Online convex programming weights: exponentiated gradient over experts, one weight vector per variable."""

from __future__ import annotations

from typing import Any

import torch


class ExponentiatedGradient:
    """w_e <- w_e * exp(-eta * loss_e) / sum_j(...), kept separately for every variable.

    ``share`` mixes a little of the uniform weights back in after each step (fixed share), so a
    branch that lost for a long stretch can win again after a regime change instead of being
    frozen at zero by underflow.
    """

    def __init__(self, experts: int, variables: int, eta: float = 0.5, share: float = 1e-3) -> None:
        if not 0 <= share < 1:
            raise ValueError("share must be in [0, 1)")
        self.eta = eta
        self.share = share
        self.weights = torch.full((experts, variables), 1.0 / experts)

    def update(self, losses: torch.Tensor) -> None:
        """``losses`` [experts, variables]: each expert's recent loss on each variable."""
        if losses.shape != self.weights.shape:
            raise ValueError(f"losses shape {tuple(losses.shape)} != weights {tuple(self.weights.shape)}")
        logits = self.weights.log() - self.eta * losses.detach().cpu()
        weights = logits.softmax(0)
        self.weights = (1 - self.share) * weights + self.share / weights.shape[0]

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "eta": self.eta, "share": self.share}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        self.eta = state["eta"]
        self.share = state["share"]

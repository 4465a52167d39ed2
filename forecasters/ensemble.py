"""Online convex programming over the two OneNet branches, one weight per variable, in two forms.

Both consume one step's per-variable error moments (see :func:`moments`) and expose branch 1's share as
a logit, so OneNet can mix ``sigma(logit + bias)``:

- :class:`ExponentiatedGradient`: the paper's EG update on each branch's squared error, optionally
  scale-free (each step's losses divided by their sum);
- :class:`LogitAdam`: the released code's form, an Adam step on a per-variable logit w against the
  squared error of the mix ``sigma(w) * y1 + (1 - sigma(w)) * y2``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


def moments(y1: torch.Tensor, y2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row and variable, mean over the horizon of e1^2, e2^2 and e1*e2 (e_i = y_i - y): [B, 3, C].

    The mix's squared error for a share s is s^2 m11 + (1-s)^2 m22 + 2 s (1-s) m12, so these three
    numbers are all an ensemble needs from a step.
    """
    e1, e2 = y1 - y, y2 - y
    return torch.stack([e1.pow(2).mean(1), e2.pow(2).mean(1), (e1 * e2).mean(1)], 1)


class Ensemble(Protocol):
    """Branch 1's per-variable logit, advanced by one step's :func:`moments` (averaged over its rows)."""

    def logit(self) -> torch.Tensor: ...

    def update(self, stats: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ExponentiatedGradient:
    """w_e <- w_e * exp(-eta * loss_e) / sum_j(...), kept separately for every variable.

    ``share`` mixes a little of the uniform weights back in after each step (fixed share), so a
    branch that lost for a long stretch can win again after a regime change instead of being
    frozen at zero by underflow. ``scale_free`` divides each step's losses by their sum first: with
    raw squared errors one outlier step (ETTh2's LULL: errors in the thousands) throws the whole
    weight onto one branch at once.
    """

    def __init__(
        self,
        experts: int,
        variables: int,
        eta: float = 0.5,
        share: float = 1e-3,
        scale_free: bool = False,
    ) -> None:
        if not 0 <= share < 1:
            raise ValueError("share must be in [0, 1)")
        self.eta = eta
        self.share = share
        self.scale_free = scale_free
        self.weights = torch.full((experts, variables), 1.0 / experts)

    def logit(self) -> torch.Tensor:
        """log(w_1 / w_2) per variable (two experts)."""
        log_w = self.weights.log()
        return log_w[0] - log_w[1]

    def update(self, stats: torch.Tensor) -> None:
        """``stats`` [3, C] from :func:`moments`: each branch's squared error drives its weight."""
        self.observe(stats[:2])

    def observe(self, losses: torch.Tensor) -> None:
        """``losses`` [experts, variables]: each expert's recent loss on each variable."""
        if losses.shape != self.weights.shape:
            raise ValueError(f"losses shape {tuple(losses.shape)} != weights {tuple(self.weights.shape)}")
        losses = losses.detach().cpu()
        if self.scale_free:
            losses = losses / losses.sum(0, keepdim=True).clamp(min=1e-12)
        logits = self.weights.log() - self.eta * losses
        weights = logits.softmax(0)
        self.weights = (1 - self.share) * weights + self.share / weights.shape[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.clone(),
            "eta": self.eta,
            "share": self.share,
            "scale_free": self.scale_free,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
        self.eta = state["eta"]
        self.share = state["share"]
        self.scale_free = state.get("scale_free", False)


class LogitAdam:
    """One logit w per variable; each step is an Adam step on the mix's squared error (OneNet's code)."""

    def __init__(self, variables: int, lr: float = 1e-3) -> None:
        self.w = torch.zeros(variables, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.w], lr=lr)

    def logit(self) -> torch.Tensor:
        return self.w.detach().clone()

    def update(self, stats: torch.Tensor) -> None:
        """d/dw of s^2 m11 + (1-s)^2 m22 + 2 s (1-s) m12 with s = sigma(w), in closed form."""
        m11, m22, m12 = stats.detach().cpu()
        s = torch.sigmoid(self.w.detach())
        d_share = 2 * s * m11 - 2 * (1 - s) * m22 + 2 * (1 - 2 * s) * m12
        self.w.grad = d_share * s * (1 - s)
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.optimizer.load_state_dict(state["optimizer"])


OCP_FORMS = ("eg", "eg-mse", "adam")


def build_ensemble(form: str, variables: int, eta: float = 0.5) -> Ensemble:
    """``eg``: exponentiated gradient on each step's losses divided by their sum (scale-free: one step
    moves a logit by at most eta, however large an outlier's error); ``eg-mse``: the paper's EG on the
    raw squared errors; ``adam``: the released code's Adam step on a logit."""
    if form in ("eg", "eg-mse"):
        return ExponentiatedGradient(2, variables, eta, scale_free=form == "eg")
    if form == "adam":
        return LogitAdam(variables)
    raise ValueError(f"unknown ocp form {form!r}; known: {', '.join(OCP_FORMS)}")

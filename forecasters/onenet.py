"""OneNet-style online ensembling (Wen et al., NeurIPS 2023) of a cross-time and a cross-variable branch.

Every ``learn`` is test-then-train: score the current forecast, then (1) one AdamW step on
loss(branch 1) + loss(branch 2) (Huber by default: an outlier window's gradient stays bounded), (2) one
step of the short-term bias MLP, (3) an update of the per-variable branch weights (OCP, see
:mod:`forecasters.ensemble`) on each branch's error at this step, (4) an update of the residual gain
(:mod:`forecasters.gain`). The mix is sigma(w + b) * y1 + (1 - sigma(...)) * y2 where w is branch 1's
OCP logit and b the bias the MLP produced at the series' previous step (it needs the truth, so it lags
one step); the forecast is last + g * (mix - last), g the gain per horizon step and variable. With
``recall`` (a paper-protocol variant, :mod:`forecasters.recall`) a fitted share of the series' latest
revealed residual is added to that.

A ``sequential`` batch holds consecutive steps of its series (the service's chunks when it is behind,
see :meth:`WindowBatch.steps`). The cheap per-step parts then still advance step by step inside it: the
k-th pair of a series is mixed with the OCP weights and gain after the k - 1 steps before it (one update
per step, on that step's rows) and with the bias its previous pair produced (from that pair's truth, by
the pre-update MLP), exactly as k per-step calls would, given the networks. Only the branches and the
bias MLP take one gradient step for the whole batch, and no pair is scored by anything that used its
own target. docs/forecasters.md ("Adaptive cadence") has what this recovers of per-step's score on ETTh2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forecasters.batch import WindowBatch
from forecasters.data import Windows
from forecasters.ensemble import build_ensemble, moments
from forecasters.gain import GAIN_PRIOR, ResidualGain
from forecasters.learner import Forecaster, behaves_same_in_train_mode, forecast_errors, loss_named
from forecasters.recall import RevealedResidual
from models.device import default_device

BRANCHES = ("cross_time", "cross_variable")
_SINGLE_SERIES = ""


class BiasMLP(nn.Module):
    """Per variable: [p*y1, (1-p)*y2, y] (3H values) -> a scalar logit shift (OneNet's decision MLP)."""

    def __init__(self, horizon: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3 * horizon, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, part1: torch.Tensor, part2: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        features = torch.cat([part1, part2, truth], 1).transpose(1, 2)  # [B, C, 3H]
        return self.net(features).squeeze(-1)  # [B, C]


class OneNet(Forecaster):
    """Two branches ``net(x, marks) -> [B, H, C]`` mixed per variable by OCP weights plus a learned bias."""

    name = "onenet"

    def __init__(
        self,
        cross_time: nn.Module,
        cross_variable: nn.Module,
        channels: int,
        horizon: int,
        lr: float = 1e-3,
        bias_lr: float = 1e-3,
        eta: float = 0.5,
        device: torch.device | None = None,
        loss: str = "huber",
        ocp: str = "eg",
        gain: bool = True,
        gain_prior: float | None = GAIN_PRIOR,
        recall: bool = False,
    ) -> None:
        self.device = device or default_device()
        self.horizon = horizon
        self.channels = channels
        self.branches = nn.ModuleList([cross_time, cross_variable]).to(self.device)
        #: fused: one kernel for all parameters, cheaper than foreach at batch 1 (docs/forecasters.md,
        #: "Paper protocol: closing the gap"); it differs from foreach by float rounding only.
        self.optimizer = torch.optim.AdamW(self.branches.parameters(), lr=lr, fused=True)
        self.single_pass = [behaves_same_in_train_mode(net) for net in self.branches]
        self.bias = BiasMLP(horizon).to(self.device)
        self.bias_optimizer = torch.optim.Adam(self.bias.parameters(), lr=bias_lr, fused=True)
        self.loss_fn = loss_named(loss)
        self.weights = build_ensemble(ocp, channels, eta)
        self.gain = ResidualGain(horizon, channels, prior=gain_prior) if gain else None
        self.recall = RevealedResidual(horizon, channels) if recall else None
        #: The bias from each series' previous step: {series: [C] float32}.
        self.last_bias: dict[str, np.ndarray] = {}

    # -- mixing --------------------------------------------------------------------------------
    def _branch_outputs(self, batch: WindowBatch) -> tuple[torch.Tensor, torch.Tensor]:
        for net, single_pass in zip(self.branches, self.single_pass, strict=True):
            if not single_pass:  # only dropout/batch norm care; the others skip Module.train's walk
                net.eval()
        with torch.no_grad():
            y1, y2 = (net(batch.x, batch.marks) for net in self.branches)
        return y1, y2

    def _logit(self) -> torch.Tensor:
        """logit of branch 1's ensemble weight, [C]."""
        return self.weights.logit().to(self.device)

    def _previous_bias(self, batch: WindowBatch) -> torch.Tensor:
        keys = batch.keys or (_SINGLE_SERIES,) * batch.x.shape[0]
        zero = np.zeros(self.channels, np.float32)
        rows = np.stack([self.last_bias.get(key, zero) for key in keys])
        return torch.from_numpy(rows).to(self.device)

    def _share(self, batch: WindowBatch) -> torch.Tensor:
        """sigma(logit(p) + b_prev): branch 1's share per row and variable, [B, C]."""
        return torch.sigmoid(self._logit()[None, :] + self._previous_bias(batch))

    def _mix(self, batch: WindowBatch) -> torch.Tensor:
        """The branches mixed by their shares, before the gain; ``batch`` on this model's device."""
        y1, y2 = self._branch_outputs(batch)
        share = self._share(batch)[:, None, :]
        return share * y1 + (1 - share) * y2

    def predict(self, batch: WindowBatch) -> torch.Tensor:
        batch = batch.to(self.device)
        forecast = self._mix(batch)
        last = batch.x[:, -1:, :]
        if self.gain is not None:
            forecast = last + self.gain.gain().to(self.device) * (forecast - last)
        if self.recall is not None:
            forecast = forecast + self.recall.correction(batch)
        return forecast

    def choose_gain_prior(self, windows: Windows, origins: np.ndarray) -> dict[float, float] | None:
        """Pick the gain's prior on the held-out ``origins`` (in time order) if none was given
        (:meth:`ResidualGain.choose_prior`, replayed under delayed labels with the networks as they are
        now); returns each candidate's MSE, or None when there is nothing to choose."""
        if self.gain is None or self.gain.prior is not None:
            return None
        residual, wanted = [], []
        for batch in windows.batches(origins, 256):
            batch = batch.to(self.device)
            last = batch.x[:, -1:, :]
            residual.append(self._mix(batch) - last)
            wanted.append(batch.target - last)
        return self.gain.choose_prior(torch.cat(residual), torch.cat(wanted), lag=self.horizon - 1)

    def mixing_weights(self, batch: WindowBatch) -> dict[str, list[list[float]]]:
        share = self._share(batch.to(self.device)).cpu()
        return {BRANCHES[0]: share.tolist(), BRANCHES[1]: (1 - share).tolist()}

    # -- learning ------------------------------------------------------------------------------
    def _advance_weights(
        self, y1: torch.Tensor, y2: torch.Tensor, y: torch.Tensor, step: np.ndarray
    ) -> torch.Tensor:
        """Branch 1's logit for every row [B, C], taken before the ensemble update of the row's step; one
        update per step, on the branches' per-variable error moments over that step's rows."""
        return _per_step(moments(y1, y2, y), step, self._logit, self.weights.update)

    def _advance_gain(
        self, mix: torch.Tensor, last: torch.Tensor, y: torch.Tensor, step: np.ndarray
    ) -> torch.Tensor:
        """The forecast for every row from its ``mix``, with the gain taken before the gain update of
        the row's step; one update per step, on that step's rows."""
        if self.gain is None:
            return mix
        residual = mix - last
        gain = _per_step(self.gain.moments(residual, y - last), step, self.gain.gain, self.gain.update)
        return last + gain.to(self.device) * residual

    def _advance_recall(
        self, batch: WindowBatch, forecast: torch.Tensor, step: np.ndarray, previous: np.ndarray
    ) -> torch.Tensor:
        """``forecast`` plus each row's recalled correction, with the coefficient taken before the update
        of the row's step and the residual of the row's predecessor; then each series' residual is kept."""
        if self.recall is None:
            return forecast
        residual = batch.target - forecast
        earlier, known = self.recall.previous(batch, residual, previous)
        stats = self.recall.moments(earlier, residual, known)
        coefficient = _per_step(stats, step, self.recall.coefficient, self.recall.update)
        self.recall.remember(batch, residual)
        return forecast + coefficient.to(self.device) * earlier

    def learn(self, batch: WindowBatch) -> dict[str, float]:
        batch = batch.to(self.device)
        y = batch.target
        outputs, before = [], []
        for net, single_pass in zip(self.branches, self.single_pass, strict=True):
            if not single_pass:  # dropout/batch norm: score what predict would have said
                net.eval()
                with torch.no_grad():
                    before.append(net(batch.x, batch.marks))
                net.train()
            outputs.append(net(batch.x, batch.marks))
            if single_pass:
                before.append(outputs[-1].detach())
        y1, y2 = before
        step, previous = batch.steps()
        logit = self._advance_weights(y1, y2, y, step)
        p = torch.sigmoid(logit)[:, None, :]
        bias = self.bias(p * y1, (1 - p) * y2, y)
        prior = torch.from_numpy(previous).to(self.device)
        previous_bias = torch.where(
            (prior >= 0)[:, None], bias.detach()[prior.clamp(min=0)], self._previous_bias(batch)
        )
        share = torch.sigmoid(logit + previous_bias)[:, None, :]
        forecast = self._advance_gain(share * y1 + (1 - share) * y2, batch.x[:, -1:, :], y, step)
        metrics = forecast_errors(self._advance_recall(batch, forecast, step, previous), y)

        branch_loss = sum(self.loss_fn(out, y) for out in outputs)
        self.optimizer.zero_grad(set_to_none=True)
        branch_loss.backward()
        self.optimizer.step()

        mixed_share = torch.sigmoid(logit + bias)[:, None, :]
        bias_loss = F.mse_loss(mixed_share * y1 + (1 - mixed_share) * y2, y)
        self.bias_optimizer.zero_grad(set_to_none=True)
        bias_loss.backward()
        self.bias_optimizer.step()

        keys = batch.keys or (_SINGLE_SERIES,) * y.shape[0]
        for key, row in zip(keys, bias.detach().cpu().numpy(), strict=True):
            self.last_bias[key] = row
        return {**metrics, "loss": float(branch_loss.detach()), "bias_loss": float(bias_loss.detach())}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The branches' optimizer (the reference decays only that one; the bias and OCP keep theirs)."""
        return [self.optimizer]

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "branches": self.branches.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "bias": self.bias.state_dict(),
            "bias_optimizer": self.bias_optimizer.state_dict(),
            "weights": self.weights.state_dict(),
            "last_bias": dict(self.last_bias),
            "gain": None if self.gain is None else self.gain.state_dict(),
            "recall": None if self.recall is None else self.recall.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.branches.load_state_dict(state["branches"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bias.load_state_dict(state["bias"])
        self.bias_optimizer.load_state_dict(state["bias_optimizer"])
        self.weights.load_state_dict(state["weights"])
        self.last_bias = dict(state["last_bias"])
        if self.gain is not None and state.get("gain") is not None:
            self.gain.load_state_dict(state["gain"])
        if self.recall is not None and state.get("recall") is not None:
            self.recall.load_state_dict(state["recall"])


def _per_step(
    rows: torch.Tensor,
    step: np.ndarray,
    current: Callable[[], torch.Tensor],
    update: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """For every row, ``current()`` as it was before the update of the row's step; one ``update`` per
    step, on the mean of ``rows`` [B, ...] over that step's rows. [B, ...] on ``rows``' device."""
    states = []
    for stats in _step_means(rows, step):
        states.append(current())
        update(stats)
    return torch.stack(states).to(rows.device)[torch.from_numpy(step).to(rows.device)]


def _step_means(values: torch.Tensor, step: np.ndarray) -> torch.Tensor:
    """``values`` [B, ...] averaged over the rows of each step (``step`` [B]): [steps, ...] on CPU."""
    rows_step = torch.from_numpy(step).to(values.device)
    steps = int(step.max()) + 1
    totals = values.new_zeros(steps, *values.shape[1:]).index_add_(0, rows_step, values)
    counts = torch.bincount(rows_step, minlength=steps).reshape(-1, *[1] * (values.dim() - 1))
    return (totals / counts).cpu()

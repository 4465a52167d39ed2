"""What every forecaster shares: the learner contract over window batches, error metrics, torch plumbing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from forecasters.batch import WindowBatch
from models.contract import Learner
from models.device import default_device

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def behaves_same_in_train_mode(net: nn.Module) -> bool:
    """True when ``net`` has no dropout or batch norm, so a training forward equals ``predict``'s."""
    return not any(isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)) for m in net.modules())


def forecast_errors(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean squared and mean absolute error over every step and channel of the batch."""
    error = prediction.detach() - target
    return {"mse": float(error.pow(2).mean()), "mae": float(error.abs().mean())}


class Forecaster(Learner[WindowBatch, torch.Tensor]):
    """Predicts [B, H, C] from a :class:`WindowBatch`; ``learn`` scores the pre-update forecast first."""

    horizon: int

    def mixing_weights(self, batch: WindowBatch) -> dict[str, list[list[float]]]:
        """Per-row ensemble weights to report with a forecast; single models have none."""
        return {}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers whose learning rate a schedule may scale (none for rules)."""
        return []

    def scale_lr(self, factor: float) -> None:
        """Multiply every learning rate by ``factor``; it stays in the optimizers' state (checkpoints)."""
        for optimizer in self.optimizers():
            for group in optimizer.param_groups:
                group["lr"] *= factor


class StatelessForecaster(Forecaster):
    """A rule with nothing to learn: ``learn`` only scores it."""

    def learn(self, batch: WindowBatch) -> dict[str, float]:
        return forecast_errors(self.predict(batch), batch.target)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class NetForecaster(Forecaster):
    """A torch network ``net(x, marks) -> [B, H, C]`` trained by one Adam step per ``learn``."""

    def __init__(
        self,
        net: nn.Module,
        horizon: int,
        loss_fn: LossFn,
        lr: float,
        weight_decay: float = 0.0,
        device: torch.device | None = None,
    ) -> None:
        self.device = device or default_device()
        self.net = net.to(self.device)
        self.horizon = horizon
        self.loss_fn = loss_fn
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.single_pass = behaves_same_in_train_mode(net)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def predict(self, batch: WindowBatch) -> torch.Tensor:
        batch = batch.to(self.device)
        self.net.eval()
        with torch.no_grad():
            return self.net(batch.x, batch.marks)

    def learn(self, batch: WindowBatch) -> dict[str, float]:
        batch = batch.to(self.device)
        before = None if self.single_pass else self.predict(batch)
        self.net.train()
        output = self.net(batch.x, batch.marks)
        metrics = forecast_errors(output if before is None else before, batch.target)
        loss = self.loss_fn(output, batch.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {**metrics, "loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


def mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(prediction, target)


def huber_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared below one (scaled) unit of error, linear above: an outlier's gradient stays bounded."""
    return nn.functional.huber_loss(prediction, target, delta=1.0)


LOSSES: dict[str, LossFn] = {"mse": mse_loss, "huber": huber_loss}


def loss_named(name: str) -> LossFn:
    """The training loss called ``name`` (a clear error for an unknown one)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]

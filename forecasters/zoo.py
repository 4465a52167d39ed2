"""Builds any forecaster from a small, serialisable spec (used by the bench, the CLI and the service)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from forecasters.baselines import DLinear, LastValue, SeasonalNaive
from forecasters.branches import CrossTimeMLP, CrossVariableTCN
from forecasters.card import CARD, CARDConfig, CARDNet
from forecasters.gain import GAIN_PRIOR
from forecasters.learner import Forecaster
from forecasters.onenet import OneNet


@dataclass(frozen=True)
class ForecasterSpec:
    """Which model and its shape; ``marks`` is the number of calendar features per step (0 = none)."""

    kind: str = "onenet"
    seq_len: int = 60
    horizon: int = 24
    channels: int = 7
    marks: int = 0
    period: int = 24
    lr: float = 1e-3
    #: OneNet only: the branches' training loss (``huber`` | ``mse``), the OCP form (``eg`` scale-free |
    #: ``eg-mse`` | ``adam``), each window's normalisation (``last`` | ``revin``), the residual gain and its
    #: ridge prior towards last-value (forecasters/gain.py; None: chosen on the validation split by ``fit``).
    #: Defaults are the measured best under delayed labels (docs/forecasters.md).
    loss: str = "huber"
    ocp: str = "eg"
    norm: str = "last"
    gain: bool = True
    gain_prior: float | None = GAIN_PRIOR
    #: OneNet only: add a fitted share of each series' latest revealed residual (forecasters/recall.py),
    #: the paper protocol's look-ahead; wrong under delayed labels, so never the service's default.
    recall: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ForecasterSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown forecaster options {sorted(unknown)}; known: {sorted(known)}")
        for name, value in values.items():
            default = getattr(cls, name)
            if default is None and value is None:  # an optional number left to be chosen (gain_prior)
                continue
            number = isinstance(default, float) or default is None
            want: tuple[type, ...] = (int, float) if number else (type(default),)
            if not isinstance(value, want) or (isinstance(value, bool) and not isinstance(default, bool)):
                expected = "float" if number else type(default).__name__
                raise ValueError(f"forecaster option {name}={value!r}: expected {expected}")
        return cls(**values)  # type: ignore[arg-type]

    def card_config(self) -> CARDConfig:
        return CARDConfig(seq_len=self.seq_len, horizon=self.horizon)


def _onenet(spec: ForecasterSpec, cross_time: torch.nn.Module, device: torch.device | None) -> OneNet:
    cross_variable = CrossVariableTCN(spec.channels, spec.horizon, spec.marks, norm=spec.norm)
    return OneNet(
        cross_time,
        cross_variable,
        spec.channels,
        spec.horizon,
        lr=spec.lr,
        device=device,
        loss=spec.loss,
        ocp=spec.ocp,
        gain=spec.gain,
        gain_prior=spec.gain_prior,
        recall=spec.recall,
    )


def _onenet_mlp(spec: ForecasterSpec, device: torch.device | None) -> OneNet:
    """OneNet with the cross-time MLP branch (the ``onenet`` kind)."""
    return _onenet(spec, CrossTimeMLP(spec.seq_len, spec.horizon, norm=spec.norm), device)


BUILDERS: dict[str, Callable[[ForecasterSpec, torch.device | None], Forecaster]] = {
    "last-value": lambda spec, _: LastValue(spec.horizon),
    "seasonal-naive": lambda spec, _: SeasonalNaive(spec.horizon, spec.period),
    "dlinear": lambda spec, device: DLinear(spec.seq_len, spec.horizon, spec.lr, device),
    "card": lambda spec, device: CARD(spec.card_config(), spec.lr, device),
    "onenet": _onenet_mlp,
    #: ``onenet`` with ``recall`` on: the paper protocol's variant (docs/forecasters.md, "Paper protocol:
    #: closing the gap"), beside the delayed-label default the service uses.
    "onenet-paper": lambda spec, device: _onenet_mlp(replace(spec, recall=True), device),
    "onenet-card": lambda spec, device: _onenet(spec, CARDNet(spec.card_config()), device),
}


def build_forecaster(spec: ForecasterSpec, device: torch.device | None = None) -> Forecaster:
    """A fresh forecaster for ``spec`` (raises with the known kinds for an unknown one)."""
    if spec.kind not in BUILDERS:
        raise ValueError(f"unknown forecaster kind {spec.kind!r}; known: {', '.join(BUILDERS)}")
    if spec.seq_len < 1 or spec.horizon < 1 or spec.channels < 1:
        raise ValueError("seq_len, horizon and channels must be >= 1")
    return BUILDERS[spec.kind](spec, device)

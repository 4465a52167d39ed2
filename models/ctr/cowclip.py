"""CowClip: adaptive column-wise clipping of embedding gradients, and its large-batch scaling rule.

From "CowClip: Reducing CTR Prediction Model Training Time from 12 hours to 10 minutes on 1 GPU"
(Zheng et al., AAAI 2023). For each embedding row ``k`` looked up in the batch (a row is one id of
one field), with ``cnt_k`` the number of lookups of that row in the batch::

    clip_k = cnt_k * max(r * ||w_k||, zeta)
    g_k   <- g_k * min(1, clip_k / ||g_k||)

Dense (non-embedding) weights are left alone. The bound ``zeta`` keeps rows with near-zero weights
trainable; the released code uses ``r * sqrt(dim) * zeta`` instead (``dim_scaled_bound=True``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def cowclip_(
    weight: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, ratio: float, bound: float
) -> tuple[int, int]:
    """Clip ``grad`` in place, row by row, for the rows listed in ``rows`` (one entry per lookup).

    Returns how many distinct rows were clipped and how many were looked up.
    """
    unique, counts = torch.unique(rows.reshape(-1), return_counts=True)
    row_grad = grad[unique]
    threshold = counts.to(grad.dtype) * torch.clamp(ratio * weight[unique].norm(dim=1), min=bound)
    grad_norm = row_grad.norm(dim=1)
    scale = torch.where(
        grad_norm > threshold, threshold / grad_norm.clamp(min=torch.finfo(grad.dtype).tiny), 1.0
    )
    grad[unique] = row_grad * scale.unsqueeze(1)
    return int((scale < 1.0).sum()), len(unique)


class CowClip:
    """Wraps the optimizer of the embedding parameters; clips the listed tables before each step.

    Use it like the optimizer it wraps, except that :meth:`step` takes the rows each table looked up
    in the batch (``FieldEmbedding.rows(categorical)``), since the clip scales with per-id counts.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        tables: Sequence[nn.Parameter],
        ratio: float = 1.0,
        zeta: float = 1e-5,
        dim_scaled_bound: bool = False,
    ) -> None:
        if ratio <= 0 or zeta < 0:
            raise ValueError("CowClip needs ratio > 0 and zeta >= 0")
        self.optimizer = optimizer
        self.tables = list(tables)
        self.ratio = ratio
        self.zeta = zeta
        self.dim_scaled_bound = dim_scaled_bound
        #: Share of the looked-up rows whose gradient the last :meth:`clip` scaled down.
        self.clipped_fraction = 0.0

    def bound(self, table: nn.Parameter) -> float:
        """Lower bound on the clip threshold of one lookup of a row of ``table``."""
        return self.ratio * math.sqrt(table.shape[1]) * self.zeta if self.dim_scaled_bound else self.zeta

    def clip(self, rows: Sequence[torch.Tensor]) -> None:
        """Clip the gradients of :attr:`tables` (``rows[i]`` are the lookups of ``tables[i]``)."""
        if len(rows) != len(self.tables):
            raise ValueError(f"{len(rows)} row tensors for {len(self.tables)} tables")
        clipped = looked_up_rows = 0
        for table, looked_up in zip(self.tables, rows, strict=True):
            if table.grad is not None:
                counts = cowclip_(table, table.grad, looked_up, self.ratio, self.bound(table))
                clipped, looked_up_rows = clipped + counts[0], looked_up_rows + counts[1]
        self.clipped_fraction = clipped / max(looked_up_rows, 1)

    def step(self, rows: Sequence[torch.Tensor]) -> None:
        self.clip(rows)
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


@dataclass(frozen=True)
class LargeBatchRule:
    """CowClip's scaling rule from a base batch to ``batch`` (``k = batch / base_batch``).

    Embedding learning rate unchanged, dense learning rate times ``sqrt(k)`` after a linear warmup,
    embedding L2 times ``k`` (k times fewer steps per epoch would otherwise regularise k times less).
    """

    batch: int
    base_batch: int = 1024

    @property
    def k(self) -> float:
        return self.batch / self.base_batch

    def embed_lr(self, base: float) -> float:
        return base

    def dense_lr(self, base: float) -> float:
        return base * math.sqrt(self.k)

    def l2(self, base: float) -> float:
        return base * self.k

    @staticmethod
    def warmup(step: int, warmup_steps: int) -> float:
        """Learning-rate factor at ``step`` (0-based): linear from 1/warmup_steps up to 1."""
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

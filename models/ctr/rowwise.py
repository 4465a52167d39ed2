"""A row-wise ("lazy") Adam step for big embedding tables, with CowClip: only looked-up rows change.

Why: ``torch.optim.Adam`` over an embedding table reads and writes every row of the table and both
moment tensors at every step, whether the batch looked a row up or not; with Criteo-sized tables
(tens of millions of rows) that full pass dominates a step at batch 1K. This step touches only the
rows the batch looked up: their gradient (taken from a sparse gradient, as
``embedding(..., sparse=True)`` gives, or gathered from a dense one), lazy L2, CowClip, and Adam's
moments and update, all on those rows. Untouched rows keep their weights *and* moments.

Semantics, stated so nobody is surprised: on the rows a batch touches the update is exactly dense
Adam's when those rows' moments are the same (bias correction uses the global step, as
``torch.optim.SparseAdam`` does). Rows idle in a step are not moved by their old momentum, as dense
Adam would move them; that is the usual lazy-Adam choice for sparse tables (TensorFlow's LazyAdam,
``SparseAdam``). L2 (``l2 * ||w_k||^2`` per looked-up row, as the learner adds to its loss) is added to
the gradient before clipping, in the same order as the learner's ``loss.backward()`` then CowClip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.ctr.cowclip import cowclip_
from models.ctr.layers import FieldEmbedding


def sparse_lookup(embedding: FieldEmbedding, categorical: torch.Tensor) -> torch.Tensor:
    """``embedding(categorical)`` whose backward gives the table a sparse gradient (only the looked-up
    rows), instead of a dense one the size of the whole table."""
    return nn.functional.embedding(embedding.rows(categorical), embedding.weight, sparse=True)


@dataclass(frozen=True)
class RowClip:
    """CowClip's settings (see :class:`models.ctr.cowclip.CowClip`)."""

    ratio: float = 1.0
    zeta: float = 1e-5
    dim_scaled_bound: bool = False

    def bound(self, dim: int) -> float:
        return self.ratio * dim**0.5 * self.zeta if self.dim_scaled_bound else self.zeta


class RowwiseAdam:
    """Adam on the looked-up rows of embedding tables only (optionally CowClip-ped, with lazy L2).

    ``step(rows)`` takes, per table, the row of every lookup in the batch (``FieldEmbedding.rows``), as
    :class:`models.ctr.cowclip.CowClip` does: CowClip's threshold scales with per-row lookup counts.
    ``clip`` applies to every table given; the learner clips the vector embeddings but not DeepFM's
    first-order weights, so those get a second ``RowwiseAdam`` without ``clip``.
    """

    def __init__(
        self,
        tables: Sequence[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        l2: float = 0.0,
        clip: RowClip | None = None,
    ) -> None:
        if lr <= 0 or eps <= 0 or l2 < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError("RowwiseAdam needs lr > 0, eps > 0, l2 >= 0 and betas in [0, 1)")
        if clip is not None and (clip.ratio <= 0 or clip.zeta < 0):
            raise ValueError("CowClip needs ratio > 0 and zeta >= 0")
        self.tables = list(tables)
        self.lr, self.betas, self.eps, self.l2, self.clip = lr, betas, eps, l2, clip
        self.exp_avg = [torch.zeros_like(t) for t in self.tables]
        self.exp_avg_sq = [torch.zeros_like(t) for t in self.tables]
        self.steps = 0
        #: Share of the looked-up rows whose gradient the last step clipped (0 without CowClip).
        self.clipped_fraction = 0.0

    def zero_grad(self) -> None:
        for table in self.tables:
            table.grad = None

    @torch.no_grad()
    def step(self, rows: Sequence[torch.Tensor]) -> None:
        """One Adam step on the rows looked up in the batch (``rows[i]`` for ``tables[i]``)."""
        if len(rows) != len(self.tables):
            raise ValueError(f"{len(rows)} row tensors for {len(self.tables)} tables")
        self.steps += 1
        clipped = looked_up_rows = 0
        for index, (table, looked_up) in enumerate(zip(self.tables, rows, strict=True)):
            if table.grad is None:
                continue
            unique, inverse = torch.unique(looked_up.reshape(-1), return_inverse=True)
            grad = _row_gradient(table.grad, unique)
            weight = table[unique]
            if self.l2 > 0:
                grad += 2 * self.l2 * weight
            if self.clip is not None:
                # CowClip's own math on the compact rows: positions 0..U-1 stand for ``unique``.
                counts = cowclip_(weight, grad, inverse, self.clip.ratio, self.clip.bound(table.shape[1]))
                clipped, looked_up_rows = clipped + counts[0], looked_up_rows + counts[1]
            table[unique] = weight - self._update(index, unique, grad)
        self.clipped_fraction = clipped / max(looked_up_rows, 1)

    def _update(self, index: int, unique: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Adam's moments for ``unique`` rows of table ``index`` (stored back), and the step to take."""
        beta1, beta2 = self.betas
        exp_avg = self.exp_avg[index][unique].mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq = self.exp_avg_sq[index][unique].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.exp_avg[index][unique] = exp_avg
        self.exp_avg_sq[index][unique] = exp_avg_sq
        correction1 = 1 - beta1**self.steps
        correction2 = 1 - beta2**self.steps
        denominator = (exp_avg_sq.sqrt() / correction2**0.5).add_(self.eps)
        return exp_avg / denominator * (self.lr / correction1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "exp_avg": [t.detach().cpu().clone() for t in self.exp_avg],
            "exp_avg_sq": [t.detach().cpu().clone() for t in self.exp_avg_sq],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shapes = [tuple(t.shape) for t in self.tables]
        for name in ("exp_avg", "exp_avg_sq"):
            found = [tuple(t.shape) for t in state[name]]
            if found != shapes:
                raise ValueError(f"optimizer state {name} has shapes {found}, the tables {shapes}")
        self.steps = int(state["steps"])
        self.exp_avg = [t.to(w.device).clone() for t, w in zip(state["exp_avg"], self.tables, strict=True)]
        self.exp_avg_sq = [
            t.to(w.device).clone() for t, w in zip(state["exp_avg_sq"], self.tables, strict=True)
        ]


def _row_gradient(grad: torch.Tensor, unique: torch.Tensor) -> torch.Tensor:
    """The gradient of rows ``unique`` (sorted) as a dense ``[len(unique), dim]`` copy."""
    if not grad.is_sparse:
        return grad[unique].clone()
    grad = grad.coalesce()  # sums repeated lookups; indices come out sorted and unique
    if not torch.equal(grad.indices()[0], unique):
        raise ValueError("the sparse gradient's rows differ from the rows looked up in the batch")
    return grad.values().clone()

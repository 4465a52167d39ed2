"""Building blocks shared by DeepFM and DCN-v2: per-field embedding tables and an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FieldEmbedding(nn.Module):
    """One table holding every field's buckets back to back (field f owns rows ``[f*B, (f+1)*B)``).

    Keeping fields in separate row ranges makes an id's row unique per field, which is what CowClip's
    per-field, per-id clipping needs; one table keeps the lookup a single gather.
    """

    def __init__(self, fields: int, buckets: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.fields, self.buckets = fields, buckets
        self.weight = nn.Parameter(torch.randn(fields * buckets, dim) * init_std)
        self.register_buffer("offsets", self.field_offsets(), persistent=False)

    def field_offsets(self) -> torch.Tensor:
        """The first row of each field, on :attr:`weight`'s device (not saved: derived from the shape).

        A network built on the ``meta`` device and loaded with ``load_state_dict(assign=True)`` has
        its saved tensors but not these: :func:`models.ctr.serving` sets them again.
        """
        return torch.arange(self.fields, dtype=torch.long, device=self.weight.device) * self.buckets

    def rows(self, categorical: torch.Tensor) -> torch.Tensor:
        """Row of every ``[batch, field]`` bucket id in :attr:`weight`."""
        return categorical + self.offsets

    def forward(self, categorical: torch.Tensor) -> torch.Tensor:
        """``[batch, fields, dim]`` embeddings."""
        return nn.functional.embedding(self.rows(categorical), self.weight)


def mlp(width_in: int, hidden: Sequence[int]) -> nn.Sequential:
    """Linear + ReLU layers of the given widths (the output width is ``hidden[-1]``)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(width_in, width), nn.ReLU()]
        width_in = width
    return nn.Sequential(*layers)

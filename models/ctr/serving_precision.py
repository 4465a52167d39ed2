"""The ``ctr.serving_precision`` option: the number format a serving replica's DNN scores in.

A replica's 100-candidate ``/ctr/score`` is bound by the DNN's matrix products (88% of a forward
pass, ``torch.profiler``, one thread), and a CPU with native bfloat16 arithmetic does those several
times faster in bfloat16: one 100x400 by 400x400 product took 82 us against 303 us in float32 on
this project's AMD EPYC (AVX-512 BF16). Only the DNN is converted; embeddings, the FM term and the
output stay float32. Against the float32 scores of a DeepFM trained on 80,000 MovieLens-100K
impressions and scored on the other 20,000: mean absolute difference 0.0003, at most 0.003, AUC
0.63188 against 0.63187, and 99.4% of each 100-candidate top 10 unchanged.

``auto`` (the default) times one such product in both formats when the replica starts and takes
bfloat16 only where it is at least :data:`BF16_MIN_SPEEDUP` times faster, so a CPU that emulates
bfloat16 keeps float32; CUDA replicas keep float32. ``float32`` gives the trainer's own scores
(to 1e-5), ``bfloat16`` forces the faster format.
"""

from __future__ import annotations

import time
from functools import cache
from typing import TypeVar

import torch
from torch import nn

PRECISIONS = ("auto", "float32", "bfloat16")
Net = TypeVar("Net", bound=nn.Module)
#: How much faster a bfloat16 product must be for ``auto`` to choose it.
BF16_MIN_SPEEDUP = 1.5


def check_precision(requested: object) -> None:
    """Raise a ValueError naming the ``ctr.serving_precision`` values unless ``requested`` is one."""
    if requested not in PRECISIONS:
        raise ValueError(f"ctr.serving_precision must be one of {list(PRECISIONS)}, got {requested!r}")


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """The dtype a replica's DNN scores in for the ``ctr.serving_precision`` value ``requested``."""
    check_precision(requested)
    if requested == "float32" or (requested == "auto" and device.type != "cpu"):
        return torch.float32
    if requested == "bfloat16" or bf16_speedup() >= BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return torch.float32


@cache
def bf16_speedup(rows: int = 100, width: int = 400, repeats: int = 20) -> float:
    """float32 time over bfloat16 time of a ``rows`` x ``width`` by ``width`` x ``width`` product
    on this CPU (best of ``repeats`` each, after a warm-up); measured once per process."""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(rows, width, dtype=dtype), torch.randn(width, width, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        best[dtype] = min(times)
    return best[torch.float32] / best[torch.bfloat16]


class LowPrecisionMlp(nn.Module):
    """An MLP run in ``dtype``: inputs cast down, outputs cast back to float32."""

    def __init__(self, mlp: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.mlp = mlp.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.to(self.dtype)).float()


def in_precision(net: Net, dtype: torch.dtype) -> Net:
    """``net`` (a DeepFM or DCN-v2 network, whose DNN is ``net.dnn``) with its DNN in ``dtype``."""
    if dtype != torch.float32:
        net.dnn = LowPrecisionMlp(net.dnn, dtype)
    return net

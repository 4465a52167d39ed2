"""Synthetic impressions whose clicks depend on the item and a dense feature (learnable, seeded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.ctr.features import FeatureSpec
from models.ctr.service import CtrService, build_service
from streams.schemas import Impression

SPEC = FeatureSpec(categorical=("user", "item"), dense=("x",), buckets=4096)
#: Small, fast CtrService options for the synthetic stream.
OPTIONS: dict[str, Any] = {
    "categorical_fields": "user,item",
    "dense_fields": ["x"],
    "buckets": 4096,
    "embed_dim": 4,
    "hidden": [16, 16],
    "batch_size": 256,
    "embed_lr": 1e-2,
    "dense_lr": 1e-2,
    "swap_interval_s": 60.0,
    "warmup_samples": 0,
}


def impressions(n: int, seed: int = 0, labelled: bool = True) -> list[Impression]:
    """Even-numbered items are clicked far more often; larger ``x`` adds to the odds."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 40, n)
    users = rng.integers(0, 60, n)
    x = rng.normal(3.0, 2.0, n)
    logits = 2.5 * (items % 2 == 0) - 1.25 + 0.8 * (x - 3.0) / 2.0
    clicks = rng.random(n) < 1 / (1 + np.exp(-logits))
    return [
        Impression(
            id=f"s{seed}-{i}",
            ts=float(i),
            categorical={"user": f"u{users[i]}", "item": f"i{items[i]}"},
            dense={"x": float(x[i])},
            clicked=int(clicks[i]) if labelled else None,
        )
        for i in range(n)
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_service(tmp_path: Path, **overrides: Any) -> tuple[CtrService, Clock]:
    service = build_service(tmp_path, **{**OPTIONS, **overrides})
    clock = Clock()
    service.clock = clock
    return service, clock

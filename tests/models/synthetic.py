"""Synthetic impressions whose clicks depend on the item and a dense feature (learnable, seeded)."""

from __future__ import annotations

import numpy as np

from models.ctr.features import FeatureSpec
from streams.schemas import Impression

SPEC = FeatureSpec(categorical=("user", "item"), dense=("x",), buckets=4096)


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

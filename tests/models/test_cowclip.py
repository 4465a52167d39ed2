"""CowClip's clipping math against a hand computation, and the large-batch scaling rule."""

from __future__ import annotations

import math

import pytest
import torch

from models.ctr.cowclip import CowClip, LargeBatchRule, cowclip_

# Rows 0..3 of a tiny 2-d table. Lookups in the batch: row 0 twice, rows 1 and 2 once, row 3 never.
WEIGHT = [[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]
GRAD = [[12.0, 16.0], [0.0, 3.0], [0.5, 0.0], [100.0, 0.0]]
LOOKUPS = torch.tensor([[0, 1], [0, 2]])


def test_clip_matches_hand_computation() -> None:
    grad = torch.tensor(GRAD)
    assert cowclip_(torch.tensor(WEIGHT), grad, LOOKUPS, ratio=1.0, bound=0.1) == (2, 3)
    # row 0: cnt 2, ||w|| 5  -> clip 2*5 = 10, ||g|| 20 -> scaled by 1/2
    # row 1: cnt 1, ||w|| 0  -> clip 1*max(0, 0.1) = 0.1, ||g|| 3 -> scaled by 0.1/3
    # row 2: cnt 1, ||w|| 1  -> clip 1, ||g|| 0.5 -> unchanged
    # row 3: not looked up   -> unchanged
    expected = torch.tensor([[6.0, 8.0], [0.0, 0.1], [0.5, 0.0], [100.0, 0.0]])
    torch.testing.assert_close(grad, expected)


def test_ratio_scales_threshold() -> None:
    grad = torch.tensor(GRAD)
    cowclip_(torch.tensor(WEIGHT), grad, LOOKUPS, ratio=0.5, bound=0.0)
    # row 0: clip 2*0.5*5 = 5 -> scale 5/20; row 2: clip 0.5 = ||g|| -> unchanged; row 1: clip 0 -> zeroed
    torch.testing.assert_close(grad[0], torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(grad[1], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(grad[2], torch.tensor([0.5, 0.0]))


def test_dim_scaled_bound_is_the_released_codes() -> None:
    table = torch.nn.Parameter(torch.tensor(WEIGHT))
    table.grad = torch.tensor(GRAD)
    clipper = CowClip(torch.optim.SGD([table], lr=0.0), [table], ratio=1.0, zeta=0.1, dim_scaled_bound=True)
    clipper.clip([LOOKUPS])
    assert clipper.clipped_fraction == 2 / 3
    # row 1 has ||w|| = 0, so its threshold is the bound r*sqrt(d)*zeta = sqrt(2)*0.1
    torch.testing.assert_close(table.grad[1], torch.tensor([0.0, math.sqrt(2) * 0.1]))


def test_step_clips_only_listed_tables_then_steps() -> None:
    table = torch.nn.Parameter(torch.tensor(WEIGHT))
    dense = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    table.grad = torch.tensor(GRAD)
    dense.grad = torch.tensor([50.0, 50.0])
    clipper = CowClip(torch.optim.SGD([table, dense], lr=1.0), [table], ratio=1.0, zeta=0.1)
    clipper.step([LOOKUPS])
    torch.testing.assert_close(table.data[0], torch.tensor([3.0 - 6.0, 4.0 - 8.0]))
    torch.testing.assert_close(dense.data, torch.tensor([-49.0, -49.0]))  # dense gradient unclipped


def test_zero_gradient_rows_stay_zero() -> None:
    grad = torch.zeros(4, 2)
    cowclip_(torch.tensor(WEIGHT), grad, LOOKUPS, ratio=1.0, bound=0.0)
    assert torch.count_nonzero(grad) == 0
    assert torch.isfinite(grad).all()


def test_rejects_mismatched_rows_and_bad_settings() -> None:
    table = torch.nn.Parameter(torch.tensor(WEIGHT))
    clipper = CowClip(torch.optim.SGD([table], lr=1.0), [table])
    with pytest.raises(ValueError, match="1 tables"):
        clipper.clip([LOOKUPS, LOOKUPS])
    with pytest.raises(ValueError):
        CowClip(torch.optim.SGD([table], lr=1.0), [table], ratio=0.0)


def test_large_batch_rule() -> None:
    rule = LargeBatchRule(batch=65_536, base_batch=1024)
    assert rule.k == 64
    assert rule.embed_lr(1e-4) == 1e-4
    assert rule.dense_lr(1e-4) == pytest.approx(8e-4)
    assert rule.l2(1e-5) == pytest.approx(64e-5)
    assert [LargeBatchRule.warmup(step, 4) for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert LargeBatchRule.warmup(0, 0) == 1.0

"""bench/ctr_serving_precision.py's top-10 agreement: the share of each group's top 10 kept."""

from __future__ import annotations

import numpy as np

from bench.ctr_serving_precision import top10_kept


def test_top10_kept_counts_each_groups_shared_top_ten() -> None:
    reference = np.arange(200, dtype=float)  # each group's top 10: its last 10 candidates
    same, reversed_ = reference.copy(), -reference
    swapped = reference.copy()
    swapped[[89, 80]] = swapped[[80, 89]]  # below group 0's top 10: the set is unchanged
    swapped[[190, 100]] = swapped[[100, 190]]  # group 1 swaps one of its top 10 out
    assert top10_kept(reference, same) == [1.0, 1.0]
    assert top10_kept(reference, reversed_) == [0.0, 0.0]
    assert top10_kept(reference, swapped) == [1.0, 0.9]
    assert top10_kept(reference[:150], reference[:150]) == [1.0]  # a last partial group is left out

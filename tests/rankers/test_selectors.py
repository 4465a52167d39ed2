from __future__ import annotations

import math

import numpy as np
import pytest

from rankers.selectors import (
    Combined,
    PercentileScale,
    PredictionVariance,
    RandomSelector,
    RankingEntropy,
    make_selector,
    prediction_variance,
    rank_positions,
    ranking_entropy,
    top_k,
)


def test_rank_positions_tie_break_by_document_order() -> None:
    assert rank_positions(np.array([[0.1, 0.9, 0.5], [1.0, 1.0, 0.0]])).tolist() == [[2, 0, 1], [0, 1, 2]]


def test_identical_committee_has_zero_entropy() -> None:
    member = np.array([0.3, 0.1, 0.7, 0.2])
    assert ranking_entropy(np.stack([member, member * 2 + 1, member])) == 0.0  # same ranking, other scale


def test_single_member_has_zero_entropy() -> None:
    assert ranking_entropy(np.array([[1.0, 2.0, 3.0]])) == 0.0


def test_fully_disagreeing_committee_has_entropy_one() -> None:
    # three members, three documents, each document at a different position in each member (Latin square)
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [2.0, 1.0, 3.0]])
    assert ranking_entropy(scores) == pytest.approx(1.0)


def test_partial_disagreement_matches_hand_computation() -> None:
    # two members swap the first two documents, agree on the third
    scores = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    # docs 0,1: positions {0,1} -> entropy log 2; doc 2: position 2 twice -> 0; mean / log 2 = 2/3
    assert ranking_entropy(scores) == pytest.approx(2 / 3)


def test_top_k_entropy_ignores_disagreement_below_the_top() -> None:
    # members agree on the first document and swap the last two
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 1.0, 2.0]])
    assert ranking_entropy(scores) == pytest.approx(2 / 3)
    assert ranking_entropy(scores, top=1) == 0.0
    assert ranking_entropy(scores, top=2) == pytest.approx(2 / 3)  # position 1 vs "below" still differs
    with pytest.raises(ValueError, match="top"):
        RankingEntropy(top=0)


def test_prediction_variance_uses_the_serving_member() -> None:
    scores = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    assert prediction_variance(scores) == pytest.approx(np.var([1.0, 2.0, 3.0]))
    assert prediction_variance(np.array([[5.0]])) == 0.0


def test_bad_committee_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        ranking_entropy(np.zeros(3))


def test_percentile_scale_is_mid_rank_within_call_and_window() -> None:
    assert PercentileScale()(np.array([10.0, 30.0, 20.0])).tolist() == [0.0, 1.0, 0.5]
    assert PercentileScale()(np.array([1.0, 1.0])).tolist() == [0.5, 0.5]
    windowed = PercentileScale(window=10)
    windowed(np.array([0.0, 1.0, 2.0, 3.0]))
    assert windowed(np.array([4.0])).tolist() == [1.0]  # above all four remembered values
    assert windowed(np.array([-1.0])).tolist() == [0.0]


def test_combined_weighs_percentiles_by_alpha() -> None:
    agree_flat = np.array([[0.0, 0.1], [0.0, 0.1]])  # RE 0, PV small
    disagree_flat = np.array([[0.0, 0.1], [0.1, 0.0]])  # RE 1, PV small
    agree_steep = np.array([[0.0, 10.0], [0.0, 10.0]])  # RE 0, PV large
    batch = [agree_flat, disagree_flat, agree_steep]
    assert np.argmax(Combined(alpha=0.0).score(batch)) == 1
    assert np.argmax(Combined(alpha=10.0).score(batch)) == 2
    both = Combined(alpha=1.0).score(batch)
    assert both[0] < both[1] and both[0] < both[2]


def test_single_criterion_selectors_order_by_their_criterion() -> None:
    batch = [np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([[0.0, 5.0], [0.0, 5.0]])]
    assert RankingEntropy().score(batch).tolist() == [1.0, 0.0]
    assert PredictionVariance().score(batch).tolist() == [0.25, 6.25]


def test_random_selector_ignores_the_committee_and_is_seeded() -> None:
    batch = [np.zeros((2, 3))] * 50
    a, b = RandomSelector(seed=1).score(batch), RandomSelector(seed=1).score(batch)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50


def test_top_k_orders_best_first_and_breaks_ties_randomly() -> None:
    assert top_k(np.array([0.2, 0.9, 0.5]), 2, np.random.default_rng(0)).tolist() == [1, 2]
    firsts = {int(top_k(np.ones(4), 1, np.random.default_rng(s))[0]) for s in range(40)}
    assert len(firsts) > 1


def test_make_selector_knows_every_name_and_rejects_others() -> None:
    for name in ("re+pv", "re", "pv", "random"):
        assert make_selector(name).name == name
    with pytest.raises(ValueError, match="unknown selector"):
        make_selector("bald")
    with pytest.raises(ValueError, match="alpha"):
        Combined(alpha=math.nan)

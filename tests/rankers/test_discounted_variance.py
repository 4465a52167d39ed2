"""The discounted committee variance (DV) criterion and the dv+pv selector built on it."""

from __future__ import annotations

import numpy as np
import pytest

from rankers.selectors import Combined, DiscountedVariance, discounted_variance, make_selector


def test_agreeing_members_have_no_variance_whatever_their_scale() -> None:
    member = np.array([0.3, 0.1, 0.7, 0.2])
    assert discounted_variance(np.stack([member, member * 3 + 1, member])) == pytest.approx(0.0)


def test_one_member_or_constant_members_score_zero() -> None:
    assert discounted_variance(np.array([[1.0, 2.0, 3.0]])) == 0.0
    assert discounted_variance(np.ones((3, 4))) == 0.0


def test_disagreement_at_the_serving_top_counts_more_than_at_the_bottom() -> None:
    serving = np.array([4.0, 3.0, 2.0, 1.0, 0.0])
    top_swapped = np.array([3.0, 4.0, 2.0, 1.0, 0.0])  # the two documents the server ranks first
    bottom_swapped = np.array([4.0, 3.0, 2.0, 0.0, 1.0])  # the two it ranks last
    top = discounted_variance(np.stack([top_swapped, serving]))
    bottom = discounted_variance(np.stack([bottom_swapped, serving]))
    assert top > bottom > 0.0


def test_dv_matches_its_definition_on_a_small_committee() -> None:
    members = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]])
    standard = (members - members.mean(axis=1, keepdims=True)) / members.std(axis=1, keepdims=True)
    weights = 1.0 / np.log2(2.0 + np.array([1.0, 2.0, 0.0]))  # serving order: doc 2, doc 1, doc 0
    expected = np.sum(weights * standard.var(axis=0)) / weights.sum()
    assert discounted_variance(members) == pytest.approx(expected)


def test_dv_pv_combines_percentiles_of_dv_and_pv() -> None:
    selector = make_selector("dv+pv")
    assert isinstance(selector, Combined) and selector.name == "dv+pv"
    calm = np.stack([np.array([0.0, 1.0, 2.0])] * 2)
    torn = np.array([[0.0, 5.0, 10.0], [10.0, 5.0, 0.0]])  # more disagreement and more spread
    scores = selector.score([calm, torn])
    assert scores[1] > scores[0]
    assert DiscountedVariance().score([calm, torn])[0] == pytest.approx(0.0)

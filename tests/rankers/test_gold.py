"""Gold-task scoring (``rankers/gold.py``): per-annotator exact-grade share and NDCG@10 against known
grades, and the even spacing of gold tasks in the query stream."""

from __future__ import annotations

import itertools

import pytest

from rankers.gold import GoldScores, gold_due, score_label

TRUTH = {"a": 3, "b": 1, "c": 0, "d": 2}


def test_a_perfect_label_scores_one_on_both():
    assert score_label(dict(TRUTH), TRUTH) == (1.0, pytest.approx(1.0))


def test_a_shifted_scale_keeps_the_order_but_no_exact_grade():
    shifted = {d: g + 1 for d, g in TRUTH.items()}
    exact, ndcg = score_label(shifted, TRUTH)
    assert exact == 0.0 and ndcg == pytest.approx(1.0)


def test_a_reversed_label_ranks_badly_and_half_exact_counts_documents():
    reversed_order = {"a": 0, "b": 2, "c": 3, "d": 1}
    exact, ndcg = score_label(reversed_order, TRUTH)
    assert exact == 0.0 and ndcg < 0.6
    exact, _ = score_label({"a": 3, "b": 1, "c": 4, "d": 4}, TRUTH)
    assert exact == 0.5


def test_no_relevant_document_has_no_ndcg_and_a_wrong_document_set_is_refused():
    assert score_label({"x": 2, "y": 0}, {"x": 0, "y": 0}) == (0.5, None)
    with pytest.raises(ValueError, match="exactly the gold task's documents"):
        score_label({"a": 3}, TRUTH)


def test_scores_average_per_annotator_and_survive_a_checkpoint():
    scores = GoldScores()
    scores.add("ann", dict(TRUTH), TRUTH)
    scores.add("ann", {"a": 3, "b": 1, "c": 4, "d": 4}, TRUTH)  # exact 0.5
    scores.add("bob", {"x": 1, "y": 0}, {"x": 0, "y": 0})  # no relevant document: no ndcg
    summary = scores.summary()
    assert summary["ann"]["gold_tasks"] == 2 and summary["ann"]["exact"] == pytest.approx(0.75)
    assert 0.0 < summary["ann"]["ndcg@10"] < 1.0
    assert summary["bob"] == {"gold_tasks": 1, "exact": 0.5, "ndcg@10": None}
    restored = GoldScores()
    restored.load_state_dict(scores.state_dict())
    assert restored.summary() == summary


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.25, 1 / 3, 1.0])
def test_gold_tasks_come_evenly_at_the_rate(rate):
    due = [n for n in range(1, 301) if gold_due(n, rate)]
    assert len(due) == int(300 * rate)
    gaps = {b - a for a, b in itertools.pairwise(due)}
    assert not gaps or max(gaps) - min(gaps) <= 1  # evenly spread, never bunched


def test_a_rate_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="gold_rate"):
        gold_due(1, 1.5)

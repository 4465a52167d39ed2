"""A paced labeling budget spreads each window's tasks over the window instead of its first queries."""

from __future__ import annotations

import pytest

from rankers.budget import LabelingBudget


def greedy_takes(budget: LabelingBudget, queries: int) -> list[int]:
    """Arrival indices a take-everything-allowed threshold would turn into tasks."""
    taken = []
    for i in range(queries):
        budget.arrive(float(i))
        if budget.left > 0:
            budget.spend()
            taken.append(i)
    return taken


def test_unpaced_budget_goes_to_the_first_queries_of_each_window() -> None:
    assert greedy_takes(LabelingBudget(3, 10), 20) == [0, 1, 2, 10, 11, 12]


def test_paced_budget_allows_ceil_of_limit_times_the_share_of_window_seen() -> None:
    taken = greedy_takes(LabelingBudget(3, 10, pace=True), 20)
    assert taken == [0, 3, 6, 10, 13, 16]  # allowance ceil(3k/10) grows at the k = 1st, 4th, 7th query


def test_paced_allowance_carries_over_within_the_window() -> None:
    budget = LabelingBudget(4, 8, pace=True)
    for i in range(6):  # nothing spent while 6 of 8 queries pass: ceil(4 * 6 / 8) = 3 allowed
        budget.arrive(float(i))
    assert budget.left == 3
    for _ in range(3):
        budget.spend()
    with pytest.raises(RuntimeError, match="exhausted"):
        budget.spend()


def test_pacing_needs_a_window_of_queries() -> None:
    with pytest.raises(ValueError, match="per='queries'"):
        LabelingBudget(3, 60.0, per="seconds", pace=True)

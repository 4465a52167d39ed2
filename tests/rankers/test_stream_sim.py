"""Stream-mode simulation: labels come back late, budgets hold, selectors compared at equal label counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rankers.curve_stats import curve_at, labels_to_reach, paired_gain_ci
from rankers.mq2008 import load_mq2008, mq2008_folder
from rankers.selectors import SELECTORS
from rankers.stream_sim import StreamRun, StreamSettings, make_service, stream_run

from .conftest import synthetic_queries

SMALL = StreamSettings(
    budget=4, budget_window=10, delay=7, batch=3, max_labels=10, checkpoints=(5, 10), rounds=5
)


def replay(selector: str, settings: StreamSettings = SMALL, n_stream: int = 80) -> StreamRun:
    stream, test = synthetic_queries(n_stream, docs=8, seed=1), synthetic_queries(6, docs=8, seed=2)
    return stream_run(make_service(selector, settings, seed=0), stream, test, settings)


def test_labels_arrive_after_the_delay_in_the_first_micro_batch_past_it() -> None:
    run = replay("re+pv")
    assert run.learned_at, "no label was learned"
    for created, learned in run.learned_at:
        assert SMALL.delay <= learned - created < SMALL.delay + SMALL.batch
    first_learned = min(learned for _, learned in run.learned_at)
    assert first_learned >= SMALL.delay  # the cold start: nothing is learned before the first delay


def test_zero_delay_learns_a_task_at_the_end_of_its_own_micro_batch() -> None:
    settings = StreamSettings(**{**SMALL.__dict__, "delay": 0})
    run = replay("random", settings)
    assert all(learned // settings.batch == created // settings.batch for created, learned in run.learned_at)


@pytest.mark.parametrize("selector", ["random", "re+pv"])
def test_the_budget_of_every_window_is_respected(selector: str) -> None:
    settings = StreamSettings(**{**SMALL.__dict__, "max_labels": 100})
    run = replay(selector, settings, n_stream=50)
    created = Counter(i // settings.budget_window for i, _ in run.learned_at)
    assert max(created.values()) <= settings.budget
    assert len(run.task_selectors) <= settings.budget * -(-run.queries_seen // settings.budget_window)
    assert run.task_selectors[0] == "cold-start"  # before the first model the budget alone decides


@pytest.mark.parametrize("selector", SELECTORS)
def test_every_selector_is_evaluated_at_exactly_the_checkpoint_label_counts(selector: str) -> None:
    run = replay(selector)
    assert len(run.learned_at) == len(run.labeled_ids) == SMALL.max_labels  # stopped at the cap
    assert set(SMALL.checkpoints) <= set(run.points)
    assert max(run.points) == SMALL.max_labels
    assert len(set(run.labeled_ids)) == SMALL.max_labels  # each labeled query once


def test_a_paced_budget_spends_fewer_tasks_on_the_cold_start() -> None:
    unpaced = StreamSettings(**{**SMALL.__dict__, "budget": 8, "budget_window": 20})
    paced = StreamSettings(**{**unpaced.__dict__, "pace": True})
    unpaced_cold = replay("re+pv", unpaced).task_selectors.count("cold-start")
    paced_cold = replay("re+pv", paced).task_selectors.count("cold-start")
    # the first model exists from query 9 on (first label due at 7, learned at the end of batch 6-8)
    assert unpaced_cold == 8  # the budget alone decides: queries 0-7
    assert paced_cold == 4  # ceil(8 * 9 / 20) by query 8


def test_a_short_stream_ends_with_what_it_labeled() -> None:
    run = replay("random", n_stream=15)
    assert run.queries_seen == 15 and len(run.learned_at) < SMALL.max_labels


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="delay"):
        StreamSettings(delay=-1)
    with pytest.raises(ValueError, match="true grades"):
        stream = synthetic_queries(5)
        unlabeled = type(stream)(stream.features, stream.offsets, stream.query_ids)
        stream_run(make_service("re", SMALL, 0), unlabeled, stream, SMALL)


def test_curve_at_interpolates_between_measured_label_counts() -> None:
    points = {10: {"dcg@4": 1.0}, 20: {"dcg@4": 2.0}}
    values = curve_at(points, np.array([5, 10, 15, 20, 25]), "dcg@4")
    assert np.isnan(values[0]) and np.isnan(values[-1])
    assert values[1:4].tolist() == [1.0, 1.5, 2.0]


def test_labels_to_reach_interpolates_the_first_crossing() -> None:
    grid = np.array([10, 20, 30])
    assert labels_to_reach(grid, np.array([1.0, 2.0, 3.0]), 2.5) == pytest.approx(25.0)
    assert labels_to_reach(grid, np.array([1.0, 2.0, 3.0]), 0.5) == 10.0
    assert labels_to_reach(grid, np.array([1.0, 2.0, 3.0]), 3.5) is None


def test_paired_bootstrap_ci_brackets_the_gain() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(10.0, 1.0, size=40)
    gain, low, high = paired_gain_ci(base * 1.05, base, rng)
    assert gain == pytest.approx(0.05) and low == pytest.approx(0.05) and high == pytest.approx(0.05)
    noisy = base + rng.normal(0.5, 1.0, size=40)
    gain, low, high = paired_gain_ci(noisy, base, rng)
    assert low < gain < high and low > 0  # a +5% shift with unit noise over 40 pairs
    with pytest.raises(ValueError, match="paired"):
        paired_gain_ci(base[:3], base[:4], rng)


@pytest.mark.skipif(not (mq2008_folder() / "S1.txt.gz").is_file(), reason="MQ2008 not in shared data")
def test_mq2008_loads_every_subset() -> None:
    data = load_mq2008()
    assert data.n_queries == 784 and data.features.shape == (15211, 46)
    assert data.grades is not None and set(np.unique(data.grades)) == {0, 1, 2}
    assert len(set(data.query_ids)) == 784

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.checkpoints import CheckpointStore
from rankers.data import QueryBatch
from rankers.lambdamart import LambdaMARTRanker, NotFittedError
from rankers.metrics import mean_metrics

from .conftest import synthetic_queries

SMALL = {"min_data_in_leaf": 3}


def make(**kwargs: object) -> LambdaMARTRanker:
    return LambdaMARTRanker(rounds=20, continue_rounds=5, params=SMALL, **kwargs)  # type: ignore[arg-type]


def test_learning_ranks_held_out_queries_better_than_chance(queries: QueryBatch) -> None:
    ranker = make()
    ranker.learn(queries.select(range(8)))
    test = synthetic_queries(6, seed=1)
    learned = mean_metrics(test, ranker.predict(test))["ndcg@10"]
    chance = mean_metrics(test, np.random.default_rng(0).random(len(test.features)))["ndcg@10"]
    assert learned > chance + 0.15


def test_each_learn_is_a_checkpoint_and_committee_keeps_the_last_k(queries: QueryBatch) -> None:
    ranker = make(committee_size=2)
    first = ranker.learn(queries.select([0, 1]))
    assert "ndcg@10" not in first  # nothing to test before the first model
    second = ranker.learn(queries.select([2, 3]))
    assert "ndcg@10" in second and second["labeled_queries"] == 4
    ranker.learn(queries.select([4]))
    assert ranker.n_updates == 3 and len(ranker.committee()) == 2
    scores = ranker.committee_scores(queries)
    assert scores.shape == (2, len(queries.features))
    assert np.array_equal(scores[-1], ranker.predict(queries))


def test_continue_mode_adds_trees_to_the_current_model(queries: QueryBatch) -> None:
    ranker = make(mode="continue")
    ranker.learn(queries.select(range(6)))
    trees_before = ranker.committee()[-1].count("Tree=")
    ranker.learn(queries.select([6, 7]))
    assert ranker.committee()[-1].count("Tree=") > trees_before
    assert ranker.labeled.n_queries == 8


def test_retrain_mode_fits_all_labels_from_scratch(queries: QueryBatch) -> None:
    ranker = make()
    ranker.learn(queries.select(range(6)))
    ranker.learn(queries.select([6, 7]))
    fresh = make()
    fresh.n_updates = 1  # same bagging seed as the second retrain
    fresh.learn(queries.select(range(8)))
    assert np.allclose(ranker.predict(queries), fresh.predict(queries))


def test_state_round_trip_restores_committee_and_labels(queries: QueryBatch) -> None:
    ranker = make(committee_size=3)
    for i in range(0, 8, 2):
        ranker.learn(queries.select([i, i + 1]))
    restored = make(committee_size=3)
    restored.load_state_dict(ranker.state_dict())
    assert np.array_equal(restored.committee_scores(queries), ranker.committee_scores(queries))
    assert restored.labeled.query_ids == ranker.labeled.query_ids and restored.n_updates == 4
    restored.learn(queries.select([8]))
    assert restored.labeled.n_queries == 9


def test_checkpoints_go_to_the_store(tmp_path: Path, queries: QueryBatch) -> None:
    store = CheckpointStore(tmp_path, "lambdamart")
    ranker = make(committee_size=2, store=store)
    for i in range(3):
        ranker.learn(queries.select([i]))
    assert store.versions() == [1, 2, 3]
    assert [c.state["model"] for c in store.latest(2)] == ranker.committee()


def test_errors_are_clear(queries: QueryBatch) -> None:
    ranker = make()
    with pytest.raises(NotFittedError):
        ranker.predict(queries)
    unlabeled = QueryBatch(queries.features, queries.offsets, queries.query_ids)
    with pytest.raises(ValueError, match="graded"):
        ranker.learn(unlabeled)
    ranker.learn(queries.select([0]))
    narrow = QueryBatch.from_queries(["x"], [np.zeros((3, 2))], [[0, 1, 2]])
    with pytest.raises(ValueError, match="features"):
        ranker.learn(narrow)
    with pytest.raises(ValueError, match="features"):
        ranker.predict(narrow)
    with pytest.raises(ValueError, match="mode"):
        LambdaMARTRanker(mode="sometimes")  # type: ignore[arg-type]


def test_max_labeled_queries_keeps_the_most_recent_labels(queries: QueryBatch) -> None:
    ranker = make(max_labeled_queries=3)
    ranker.learn(queries.select([0, 1]))
    ranker.learn(queries.select([2, 3]))
    assert ranker.labeled.query_ids == ("q1", "q2", "q3")
    with pytest.raises(ValueError, match="max_labeled_queries"):
        make(max_labeled_queries=0)

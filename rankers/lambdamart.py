"""A LightGBM LambdaMART ranker that learns as labels arrive and keeps its recent models as a committee.

Every call to :meth:`LambdaMARTRanker.learn` produces a new model (a checkpoint, held as LightGBM's
model text) either by retraining on every label seen so far or by continuing the current model
(``init_model``) on the new labels only. The last ``committee_size`` checkpoints form the committee
that query-by-committee selectors compare; the newest one serves.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightgbm as lgb
import numpy as np

from models.checkpoints import CheckpointStore
from models.contract import Learner
from rankers.data import QueryBatch
from rankers.metrics import mean_metrics

UpdateMode = Literal["retrain", "continue"]

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_data_in_leaf": 10,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "num_threads": 1,
    "verbose": -1,
    "deterministic": True,
}


class NotFittedError(RuntimeError):
    """The ranker has seen no labels yet, so it has no model to score with."""


class LambdaMARTRanker(Learner[QueryBatch, np.ndarray]):
    """LambdaMART with a rolling committee of its last ``committee_size`` checkpoints.

    ``mode="retrain"`` fits ``rounds`` trees on all labels so far (each retrain draws a fresh bagging
    seed, which is what makes consecutive checkpoints differ even on near-identical data);
    ``mode="continue"`` adds ``continue_rounds`` trees to the current model, fitted on the new labels.
    ``max_labeled_queries`` bounds the labels kept for retraining (and carried in :meth:`state_dict`,
    hence in every worker checkpoint) to the most recent ones. ``store``, when given, receives every
    checkpoint too (versioned on disk; :meth:`CheckpointStore.latest` then lists the same committee).
    """

    name = "lambdamart"

    def __init__(
        self,
        *,
        rounds: int = 100,
        continue_rounds: int = 20,
        mode: UpdateMode = "retrain",
        committee_size: int = 4,
        params: dict[str, Any] | None = None,
        seed: int = 0,
        store: CheckpointStore | None = None,
        max_labeled_queries: int | None = None,
    ) -> None:
        if mode not in ("retrain", "continue"):
            raise ValueError(f"mode must be 'retrain' or 'continue', got {mode!r}")
        if committee_size < 1 or rounds < 1 or continue_rounds < 1:
            raise ValueError("committee_size, rounds and continue_rounds must be >= 1")
        self.rounds = rounds
        self.continue_rounds = continue_rounds
        self.mode: UpdateMode = mode
        self.committee_size = committee_size
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.seed = seed
        self.store = store
        if max_labeled_queries is not None and max_labeled_queries < 1:
            raise ValueError("max_labeled_queries must be >= 1 (or None: keep every label)")
        self.max_labeled_queries = max_labeled_queries
        self.n_updates = 0
        self.labeled: QueryBatch | None = None
        self._members: list[str] = []
        self._boosters: list[lgb.Booster] = []
        self._snapshot: tuple[lgb.Booster, int] | None = None

    # -- scoring -----------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return bool(self._boosters)

    @property
    def n_features(self) -> int | None:
        return self._boosters[-1].num_feature() if self._boosters else None

    def predict(self, batch: QueryBatch) -> np.ndarray:
        """Scores of the newest checkpoint, one per document (higher ranks first)."""
        return self.score_with(self._serving(), batch)

    def snapshot(self) -> tuple[lgb.Booster, int] | None:
        """The serving model and its update number, or None before the first label.

        The pair is replaced whole on every update, so a reader on another thread can take it without
        the service lock and score with :meth:`score_with` while the next retrain runs.
        """
        return self._snapshot

    def committee_scores(self, batch: QueryBatch) -> np.ndarray:
        """Scores of every committee member, shape ``(members, documents)``, oldest member first."""
        self._serving()
        return np.stack([self.score_with(b, batch) for b in self._boosters])

    def committee(self) -> list[str]:
        """The committee's checkpoints as LightGBM model text, oldest first."""
        return list(self._members)

    # -- learning ----------------------------------------------------------------------------
    def learn(self, batch: QueryBatch) -> dict[str, float]:
        """Score ``batch`` with the current model (if any), then add a checkpoint trained on it."""
        if batch.grades is None:
            raise ValueError("learn needs graded documents")
        self._check_width(batch)
        metrics = mean_metrics(batch, self.predict(batch)) if self.fitted else {}
        self.labeled = batch if self.labeled is None else QueryBatch.concat([self.labeled, batch])
        if self.max_labeled_queries is not None and self.labeled.n_queries > self.max_labeled_queries:
            keep = range(self.labeled.n_queries - self.max_labeled_queries, self.labeled.n_queries)
            self.labeled = self.labeled.select(keep)
        started = time.perf_counter()
        booster = self._train(batch)
        self._push(booster.model_to_string())
        metrics["train_s"] = time.perf_counter() - started
        metrics["labeled_queries"] = float(self.labeled.n_queries)
        return metrics

    def _train(self, new: QueryBatch) -> lgb.Booster:
        params = {**self.params, "seed": self.seed + self.n_updates}
        if self.mode == "continue" and self.fitted:
            data, rounds, init = new, self.continue_rounds, self._boosters[-1]
        else:
            data, rounds, init = self.labeled, self.rounds, None
        assert data is not None and data.grades is not None
        dataset = lgb.Dataset(data.features, label=data.grades, group=data.group_sizes, params=params)
        return lgb.train(params, dataset, num_boost_round=rounds, init_model=init)

    def _push(self, model_text: str) -> None:
        self.n_updates += 1
        self._members = [*self._members, model_text][-self.committee_size :]
        self._boosters = [*self._boosters, lgb.Booster(model_str=model_text)][-self.committee_size :]
        self._snapshot = (self._boosters[-1], self.n_updates)
        if self.store is not None:
            self.store.save({"model": model_text}, meta={"update": self.n_updates})

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        labeled = self.labeled
        return {
            "members": list(self._members),
            "n_updates": self.n_updates,
            "labeled": None
            if labeled is None
            else {
                "features": labeled.features,
                "offsets": labeled.offsets,
                "query_ids": list(labeled.query_ids),
                "grades": labeled.grades,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._members = list(state["members"])[-self.committee_size :]
        self._boosters = [lgb.Booster(model_str=text) for text in self._members]
        self.n_updates = int(state["n_updates"])
        self._snapshot = (self._boosters[-1], self.n_updates) if self._boosters else None
        held = state["labeled"]
        self.labeled = None
        if held is not None:
            self.labeled = QueryBatch(
                np.asarray(held["features"], dtype=np.float32),
                np.asarray(held["offsets"], dtype=np.int64),
                tuple(held["query_ids"]),
                np.asarray(held["grades"], dtype=np.int64),
            )

    # -- internals ---------------------------------------------------------------------------
    def _serving(self) -> lgb.Booster:
        if not self._boosters:
            raise NotFittedError("the ranker has no model yet: it needs at least one labeled query")
        return self._boosters[-1]

    def _check_width(self, batch: QueryBatch) -> None:
        width = self.n_features
        if self.labeled is not None:
            width = self.labeled.features.shape[1]
        if width is not None and batch.features.shape[1] != width:
            raise ValueError(f"documents have {batch.features.shape[1]} features, the ranker expects {width}")

    def score_with(self, booster: lgb.Booster, batch: QueryBatch) -> np.ndarray:
        """Scores of ``batch`` by ``booster`` (a committee member or a :meth:`snapshot`)."""
        width = booster.num_feature()
        if batch.features.shape[1] != width:
            raise ValueError(f"documents have {batch.features.shape[1]} features, the model expects {width}")
        return np.asarray(booster.predict(batch.features, num_threads=self.params["num_threads"]))

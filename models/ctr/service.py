"""The CTR model family in the worker: train on impressions, serve a swapped frozen copy over HTTP.

Training (``process``, under the worker's lock) runs test-then-train on each micro-batch of labelled
impressions and returns the progressive AUC/logloss. Every ``swap_interval_s`` the trained model is
frozen into a new numbered version and the serving reference is swapped to it; ``POST /ctr/score``
reads that reference once and scores without the lock, so training never blocks scoring.
``POST /ctr/rollback`` serves the previous version again and resets training to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from models.ctr import movielens
from models.ctr.features import FeatureError, FeatureSpec, encode
from models.ctr.learner import CtrConfig, CtrLearner
from models.ctr.registry import learner_class
from models.ctr.versions import NoOlderVersion, VersionHistory
from streams.schemas import Impression, Record, RecordError, parse_record
from streams.service import ApiError, ApiRequest, ApiResponse, BatchResult, ModelService, Route, Subscription
from streams.topics import topic_name

NO_LABEL = "impression has no click label ('clicked' missing): it cannot be trained on"


class CtrService(ModelService):
    """Streaming DeepFM/DCN-v2 trainer with versioned, atomically swapped serving copies."""

    name = "ctr"

    def __init__(
        self,
        learner: CtrLearner,
        batch_size: int = 4096,
        batch_window_s: float = 2.0,
        swap_interval_s: float = 30.0,
        keep_versions: int = 3,
        max_candidates: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.learner = learner
        self.spec = learner.spec
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.swap_interval_s = swap_interval_s
        self.max_candidates = max_candidates
        self.history = VersionHistory(keep_versions)
        self.clock = clock
        self._last_swap = clock()

    # -- stream ---------------------------------------------------------------------------------
    def subscriptions(self) -> list[Subscription]:
        return [Subscription(topic_name("impressions"), Impression, self.batch_size, self.batch_window_s)]

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        rejected: dict[int, str] = {}
        usable: list[Impression] = []
        for index, record in enumerate(records):
            reason = self._unusable(record)
            if reason:
                rejected[index] = reason
            else:
                assert isinstance(record, Impression)
                usable.append(record)
        if not usable:
            return BatchResult(rejected=rejected)
        metrics = self.learner.learn(encode(self.spec, usable, [int(r.clicked or 0) for r in usable]))
        if self.history.serving is None or self.clock() - self._last_swap >= self.swap_interval_s:
            self.swap(metrics)
        return BatchResult(metrics=metrics, rejected=rejected)

    def _unusable(self, record: Record) -> str | None:
        if not isinstance(record, Impression):
            return f"expected an impression, got {type(record).__name__}"
        if record.clicked is None:
            return NO_LABEL
        try:
            self.spec.check(record)
        except FeatureError as exc:
            return str(exc)
        return None

    def swap(self, metrics: dict[str, float] | None = None) -> int:
        """Freeze the trained model as a new version and make it serve; return its number."""
        learner = self.learner
        version = self.history.publish(learner.scorer(), learner.samples_seen, learner.steps, metrics or {})
        self._last_swap = self.clock()
        return version.number

    def model_version(self) -> int:
        serving = self.history.serving
        return serving.number if serving else 0

    # -- HTTP -----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("POST", "/ctr/score", self._score),
            Route("POST", "/ctr/rollback", self._rollback),
            Route("GET", "/ctr/versions", self._versions),
        ]

    async def _score(self, request: ApiRequest) -> ApiResponse:
        serving = self.history.serving  # one reference read: this version stays whole for the request
        if serving is None:
            raise ApiError(503, "no CTR model yet: no labelled impression has been trained on")
        candidates = parse_candidates(request.body, self.spec, self.max_candidates)
        scores = await asyncio.to_thread(serving.scorer.predict, encode(self.spec, candidates))
        return ApiResponse(
            {
                "model": self.learner.name,
                "model_version": serving.number,
                "scores": [float(s) for s in scores],
            }
        )

    async def _rollback(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(await self.run_locked(self._rollback_locked))

    def _rollback_locked(self) -> dict[str, int]:
        previous = self.model_version()
        try:
            version = self.history.rollback()
        except NoOlderVersion as exc:
            raise ApiError(409, str(exc)) from None
        self.learner.restore(version.scorer)
        self._last_swap = self.clock()
        return {"model_version": version.number, "rolled_back_from": previous}

    async def _versions(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(await self.run_locked(self._versions_locked))

    def _versions_locked(self) -> dict[str, Any]:
        return {
            "model": self.learner.name,
            "serving": self.model_version(),
            "swap_interval_s": self.swap_interval_s,
            "trained_samples": self.learner.samples_seen,
            "versions": [v.info() for v in self.history.versions],
        }

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "history": self.history.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.history.load_state_dict(state["history"], self.learner.scorer_from)
        self._last_swap = self.clock()


def parse_candidates(body: Any, spec: FeatureSpec, limit: int) -> list[Impression]:
    """Validate a score request body; raise a 400 :class:`ApiError` saying what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("candidates"), list):
        raise ApiError(
            400, 'expected a JSON body {"candidates": [{"categorical": {...}, "dense": {...}}, ...]}'
        )
    candidates = body["candidates"]
    if not 1 <= len(candidates) <= limit:
        raise ApiError(400, f"'candidates' must hold 1 to {limit} items, got {len(candidates)}")
    parsed = []
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, dict) or not set(candidate) <= {"categorical", "dense"}:
            raise ApiError(400, f"candidate {index}: expected an object with 'categorical' and/or 'dense'")
        try:
            row = parse_record({**candidate, "id": f"candidate-{index}", "ts": 0.0}, Impression)
            assert isinstance(row, Impression)
            spec.check(row)
        except (RecordError, FeatureError) as exc:
            raise ApiError(400, f"candidate {index}: {exc}") from None
        parsed.append(row)
    return parsed


_SERVICE_OPTIONS = ("batch_window_s", "swap_interval_s", "keep_versions", "max_candidates")
_SPEC_OPTIONS = ("model", "categorical_fields", "dense_fields", "buckets")


def build_service(data_dir: Path, **options: Any) -> CtrService:
    """A CTR service from worker options (``--option ctr.KEY=VALUE``).

    Keys: ``model`` (deepfm | dcn), ``batch_size``, ``batch_window_s``, ``swap_interval_s``,
    ``keep_versions``, ``max_candidates``, ``categorical_fields`` / ``dense_fields`` / ``buckets``
    (default: the MovieLens-100K impressions), and any :class:`CtrConfig` field (``cowclip``,
    ``embed_lr`` and ``dense_lr`` (default 1e-3 here), ``l2``, ``warmup_samples`` (default
    100,000), ...). ``data_dir`` is not needed: the worker checkpoints the whole state.
    """
    options = dict(options)
    kind = str(options.pop("model", "deepfm"))
    spec = FeatureSpec(
        categorical=_names(options.pop("categorical_fields", movielens.SPEC.categorical)),
        dense=_names(options.pop("dense_fields", movielens.SPEC.dense)),
        buckets=int(options.pop("buckets", 8192)),
    )
    service_options = {key: options.pop(key) for key in _SERVICE_OPTIONS if key in options}
    batch_size = int(options.get("batch_size", 4096))
    config_fields = {f.name for f in fields(CtrConfig)}
    unknown = sorted(set(options) - config_fields)
    if unknown:
        known = sorted(config_fields | set(_SERVICE_OPTIONS) | set(_SPEC_OPTIONS))
        raise ValueError(f"unknown ctr option(s) {unknown}; known: {known}")
    # Service defaults measured on MovieLens-100K (bench/ctr_cowclip.py): the paper's 1e-4 is tuned for
    # Criteo's 45M rows and barely moves a model in the few hundred steps a small stream gives.
    options.setdefault("embed_lr", 1e-3)
    options.setdefault("dense_lr", 1e-3)
    options.setdefault("warmup_samples", 100_000)
    if "hidden" in options:
        options["hidden"] = tuple(int(width) for width in options["hidden"])
    config = CtrConfig(**{**options, "batch_size": batch_size})
    return CtrService(learner_class(kind)(spec, config), batch_size=batch_size, **service_options)


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Field names from a list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())

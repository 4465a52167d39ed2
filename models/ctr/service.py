"""The CTR model family in the worker (the trainer): train on impressions, publish swapped frozen copies.

Training (``process``, under the worker's lock) runs test-then-train on each micro-batch of labelled
impressions and returns the progressive AUC/logloss. Every ``swap_interval_s`` the trained model is
frozen into a new numbered version, the serving reference is swapped to it, and a
:class:`~streams.schemas.ModelUpdate` for it goes out on ``model-updates`` with the batch (serving
replicas, :mod:`models.ctr.serving`, load it). The HTTP API lives in :mod:`models.ctr.routes`.

``POST /ctr/rollback`` is an outcome: decided and applied under the lock, published to the control
topic and answered only once Kafka has it, so an answered rollback survives any crash. This service
also consumes the control topic: its own rollback arrives again as a no-op (its ``seq`` is held),
and after a crash the replay applies it to the restored state. Applying one serves the version the
outcome names and resets training to it, the same state however often it is applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from models.ctr import movielens
from models.ctr.features import FeatureError, FeatureSpec, encode
from models.ctr.learner import CtrConfig, CtrLearner
from models.ctr.registry import learner_class
from models.ctr.routes import CtrRoutes, versions_body
from models.ctr.versions import (
    INLINE_LIMIT,
    ModelVersion,
    NoOlderVersion,
    UnknownVersion,
    VersionHistory,
    encode_update,
    prune_updates,
)
from streams.config import Settings
from streams.schemas import Impression, Outcome, Record
from streams.service import ApiError, BatchResult, ModelService, Output, Route, Subscription
from streams.topics import topic_name

NO_LABEL = "impression has no click label ('clicked' missing): it cannot be trained on"
ROLLBACK = "rollback"


class CtrService(ModelService):
    """Streaming DeepFM/DCN-v2 trainer with versioned, atomically swapped and published serving copies."""

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
        checkpoint_root: Path | None = None,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        super().__init__()
        self.learner = learner
        self.spec = learner.spec
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.swap_interval_s = swap_interval_s
        self.history = VersionHistory(keep_versions)
        self.clock = clock
        #: Where model updates too large to travel inline are written (shared with the replicas).
        root = checkpoint_root or Settings.from_env().checkpoint_root
        self.update_store = root / "model-updates" / self.name
        self.inline_limit = inline_limit
        self._last_swap = clock()
        self.api = CtrRoutes(
            model=learner.name,
            spec=self.spec,
            max_candidates=max_candidates,
            serving=lambda: self.history.serving,
            versions=lambda: self.run_locked(self._versions_locked),
            not_ready="no CTR model yet: no labelled impression has been trained on",
            rollback=self.rollback,
        )

    # -- stream ---------------------------------------------------------------------------------
    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(topic_name("impressions"), Impression, self.batch_size, self.batch_window_s),
            Subscription(topic_name("control"), Outcome),
        ]

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        if topic == topic_name("control"):
            return self._apply_control(records)
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
        outputs = []
        if self.history.serving is None or self.clock() - self._last_swap >= self.swap_interval_s:
            outputs.append(self.update_output(self.swap(metrics)))
        return BatchResult(outputs=outputs, metrics=metrics, rejected=rejected)

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

    def _apply_control(self, records: list[Record]) -> BatchResult:
        """Apply this service's outcomes once each; re-announce the version a rollback left serving.

        The re-announcement makes the rollback's model update at least once: it goes out even when
        the worker crashed right after the answer, and a swap since then (whose own update is newer)
        suppresses it.
        """
        position = {id(record): index for index, record in enumerate(records)}
        rejected: dict[int, str] = {}
        rollbacks: list[Outcome] = []
        for outcome in self.control_records(records):
            try:
                self.apply_outcome_once(outcome)
            except ApiError as exc:
                rejected[position[id(outcome)]] = exc.message
                continue
            if outcome.kind == ROLLBACK:
                rollbacks.append(outcome)
        serving = self.history.serving
        if rollbacks and serving is not None and serving.number == rollbacks[-1].data.get("version"):
            return BatchResult(outputs=[self.update_output(serving, rollback=True)], rejected=rejected)
        return BatchResult(rejected=rejected)

    def swap(self, metrics: dict[str, float] | None = None) -> ModelVersion:
        """Freeze the trained model as a new version and make it serve; return it."""
        learner = self.learner
        version = self.history.publish(learner.scorer(), learner.samples_seen, learner.steps, metrics or {})
        self._last_swap = self.clock()
        return version

    def update_output(self, version: ModelVersion, rollback: bool = False) -> Output:
        """The ``model-updates`` record announcing ``version`` (``rollback``: serve it even though older)."""
        info = {
            "model": self.learner.name,
            "spec": asdict(self.spec),
            "swap_interval_s": self.swap_interval_s,
            "rollback": rollback,
        }
        update = encode_update(self.name, version, info, self.update_store, self.inline_limit)
        prune_updates(self.update_store, self.history.numbers())
        return Output(topic_name("model-updates"), self.name, update)

    def model_version(self) -> int:
        serving = self.history.serving
        return serving.number if serving else 0

    # -- rollback: an outcome, durable before the answer ------------------------------------------
    async def rollback(self) -> dict[str, int]:
        """Serve the previous kept version again; return once the control topic has the decision."""
        outcome = await self.run_locked(self._decide_rollback)
        await self.publish_outcome(outcome)
        data = outcome.data
        return {"model_version": data["version"], "rolled_back_from": data["rolled_back_from"]}

    def _decide_rollback(self) -> Outcome:
        try:
            target = self.history.previous()
        except NoOlderVersion as exc:
            raise ApiError(409, str(exc)) from None
        data = {"version": target.number, "rolled_back_from": self.model_version()}
        return self.new_outcome(ROLLBACK, key=self.name, data=data, ts=time.time())

    def apply_outcome(self, outcome: Outcome) -> None:
        """Serve the version a rollback names and reset training to it (idempotent)."""
        if outcome.kind != ROLLBACK:
            super().apply_outcome(outcome)  # refuses kinds this service does not take
        number = outcome.data.get("version")
        if not isinstance(number, int):
            raise ApiError(400, f"a rollback names the version to serve in data.version, got {number!r}")
        try:
            version = self.history.serve(number)
        except UnknownVersion as exc:
            raise ApiError(409, f"cannot roll back: {exc}") from None
        self.learner.restore(version.scorer)
        self._last_swap = self.clock()

    # -- HTTP -----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return self.api.routes()

    def _versions_locked(self) -> dict[str, Any]:
        return versions_body(
            self.learner.name,
            self.history.serving,
            self.history.versions,
            self.swap_interval_s,
            self.learner.samples_seen,
        )

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "history": self.history.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.history.load_state_dict(state["history"], self.learner.scorer_from)
        self._last_swap = self.clock()


_SERVICE_OPTIONS = ("batch_window_s", "swap_interval_s", "keep_versions", "max_candidates")
_SPEC_OPTIONS = ("model", "categorical_fields", "dense_fields", "buckets")


def learner_from_options(**options: Any) -> tuple[CtrLearner, dict[str, Any]]:
    """The learner that worker options describe, and the service options among them.

    Shared by the trainer and the serving replicas, so that both build the same network from the
    same ``--option ctr.KEY=VALUE`` list. Unknown keys are refused with the list of known ones.
    """
    options = dict(options)
    kind = str(options.pop("model", "deepfm"))
    spec = FeatureSpec(
        categorical=_names(options.pop("categorical_fields", movielens.SPEC.categorical)),
        dense=_names(options.pop("dense_fields", movielens.SPEC.dense)),
        buckets=int(options.pop("buckets", 8192)),
    )
    service_options = {key: options.pop(key) for key in _SERVICE_OPTIONS if key in options}
    config_fields = {f.name for f in fields(CtrConfig)}
    unknown = sorted(set(options) - config_fields)
    if unknown:
        known = sorted(config_fields | set(_SERVICE_OPTIONS) | set(_SPEC_OPTIONS))
        raise ValueError(f"unknown ctr option(s) {unknown}; known: {known}")
    # Service defaults measured on MovieLens-100K (bench/ctr_cowclip.py): the paper's 1e-4 is tuned for
    # Criteo's 45M rows and barely moves a model in the few hundred steps a small stream gives.
    options.setdefault("batch_size", 4096)
    options.setdefault("embed_lr", 1e-3)
    options.setdefault("dense_lr", 1e-3)
    options.setdefault("warmup_samples", 100_000)
    options["batch_size"] = int(options["batch_size"])
    if "hidden" in options:
        options["hidden"] = tuple(int(width) for width in options["hidden"])
    return learner_class(kind)(spec, CtrConfig(**options)), service_options


def build_service(data_dir: Path, **options: Any) -> CtrService:
    """A CTR service from worker options (``--option ctr.KEY=VALUE``).

    Keys: ``model`` (deepfm | dcn), ``batch_size``, ``batch_window_s``, ``swap_interval_s``,
    ``keep_versions``, ``max_candidates``, ``categorical_fields`` / ``dense_fields`` / ``buckets``
    (default: the MovieLens-100K impressions), and any :class:`CtrConfig` field (``cowclip``,
    ``embed_lr`` and ``dense_lr`` (default 1e-3 here), ``l2``, ``warmup_samples`` (default
    100,000), ...). The worker passes ``data_dir = <home>/ctr``; large model updates go to the
    deployment's checkpoint store (``DRIFTLINE_CHECKPOINT_STORE``, else ``<home>/checkpoints``).
    """
    learner, service_options = learner_from_options(**options)
    root = Settings.from_env(home=data_dir.parent).checkpoint_root
    return CtrService(learner, batch_size=learner.config.batch_size, checkpoint_root=root, **service_options)


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Field names from a list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())

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

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from models.ctr import movielens
from models.ctr.click_labels import ClickLabels
from models.ctr.features import CtrBatch, FeatureError, FeatureSpec, RowEncoder
from models.ctr.impression_decoder import ImpressionDecoder
from models.ctr.learner import CtrConfig, CtrLearner
from models.ctr.promotion import CtrLifecycle, LifecycleConfig
from models.ctr.registry import learner_class
from models.ctr.routes import CtrRoutes, versions_body
from models.ctr.serving_precision import check_precision
from models.ctr.threads import use_trainer_threads
from models.ctr.versions import (
    INLINE_LIMIT,
    ModelVersion,
    UpdateError,
    VersionHistory,
    encode_update,
    prune_updates,
    version_from_update,
)
from streams.config import Settings
from streams.lifecycle_routes import NotKept, kept_target
from streams.schemas import Click, Impression, ModelUpdate, Outcome, Record, RecordError, parse_record
from streams.service import ApiError, BatchResult, ModelService, Output, Route, Subscription
from streams.topics import topic_name

log = logging.getLogger(__name__)

NO_LABEL = (
    "impression has no click label ('clicked' missing): it cannot be trained on "
    "(set ctr.click_window_s to join it with the clicks topic)"
)
ROLLBACK = "rollback"


@dataclass(frozen=True)
class Rollback:
    """A rollback outcome's data: serve ``version`` (weights in ``update``) instead of
    ``rolled_back_from``, decided after training on ``trained_samples`` samples."""

    version: int
    rolled_back_from: int
    trained_samples: int
    update: ModelUpdate
    #: How the lineage records it: ``rolled_back`` or, for a version served again by hand, ``promoted``.
    action: str = "rolled_back"

    @classmethod
    def of(cls, outcome: Outcome) -> Rollback:
        """Parse ``outcome.data``; a 400 :class:`ApiError` says what is missing."""
        data = outcome.data
        try:
            update = parse_record(data["update"], ModelUpdate)
            assert isinstance(update, ModelUpdate)
            float(update.info["created"])  # how a kept version is told from a replayed namesake
            action = str(data.get("action", "rolled_back"))  # absent before lineage
            if action not in ("rolled_back", "promoted"):
                raise ValueError(f"action must be rolled_back or promoted, got {action!r}")
            return cls(
                int(data["version"]),
                int(data["rolled_back_from"]),
                int(data["trained_samples"]),
                update,
                action,
            )
        except (KeyError, TypeError, ValueError, RecordError) as exc:
            raise ApiError(
                400, f"malformed rollback outcome {outcome.seq}: {type(exc).__name__}: {exc}"
            ) from None

    def data(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rolled_back_from": self.rolled_back_from,
            "trained_samples": self.trained_samples,
            "update": self.update.model_dump(mode="json", by_alias=True, exclude_none=True),
            "action": self.action,
        }


class CtrService(ModelService):
    """Streaming DeepFM/DCN-v2 trainer with versioned, atomically swapped and published serving copies."""

    name = "ctr"

    def __init__(
        self,
        learner: CtrLearner,
        batch_size: int = 4096,
        batch_window_s: float = 0.1,
        swap_interval_s: float = 30.0,
        keep_versions: int = 3,
        max_candidates: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        checkpoint_root: Path | None = None,
        inline_limit: int = INLINE_LIMIT,
        lifecycle: LifecycleConfig | None = None,
        click_window_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.learner = learner
        self.spec = learner.spec
        #: Encodes the impressions that :meth:`_unusable` passed (it checked them against the spec).
        self.encoder = RowEncoder(self.spec)
        #: The impressions topic's fast path: a batch of labelled, well-formed impressions to one
        #: :class:`CtrBatch` with no record objects (the runner runs it ahead, off this lock).
        self.decoder = ImpressionDecoder(self.spec)
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.swap_interval_s = swap_interval_s
        self.history = VersionHistory(keep_versions)
        self.clock = clock
        #: The deployment's checkpoint store, shared with the replicas: model updates too large to
        #: travel inline and rollback targets are written under it.
        self.checkpoint_root = checkpoint_root or Settings.from_env().checkpoint_root
        self.update_store = self.checkpoint_root / "model-updates" / self.name
        #: Rollbacks replayed before training reached their decision point, by seq.
        self.pending: dict[int, Outcome] = {}
        self.inline_limit = inline_limit
        self._last_swap = clock()
        #: Promotion gate, probation with automatic rollback, drift actions, lineage.
        self.lifecycle = CtrLifecycle(self, lifecycle)
        #: The online click join (``click_window_s`` > 0): impressions without ``clicked`` wait for
        #: their clicks on the clicks topic; without it they are dead-lettered (:data:`NO_LABEL`).
        self.click_labels = (
            ClickLabels(self.spec, float(click_window_s), batch_size) if click_window_s else None
        )
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
            Subscription(
                topic_name("impressions"),
                Impression,
                self.batch_size,
                self.batch_window_s,
                decode=self.decoder.decode,
            ),
            Subscription(topic_name("control"), Outcome),
        ] + (
            [Subscription(topic_name("clicks"), Click, self.batch_size, self.batch_window_s)]
            if self.click_labels
            else []
        )

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        if topic == topic_name("control"):
            return self._apply_control(records)
        if topic == topic_name("clicks") and self.click_labels is not None:
            self.click_labels.clicks(records)
            records = []  # they label impressions held by the join: nothing else to check
        rejected: dict[int, str] = {}
        usable: list[Impression] = []
        for index, record in enumerate(records):
            reason = self._unusable(record)
            if reason:
                rejected[index] = reason
            else:
                assert isinstance(record, Impression)
                usable.append(record)
        return self._train(self._labelled(usable), rejected)

    def process_decoded(self, topic: str, decoded: CtrBatch) -> BatchResult:
        """A batch of labelled impressions that :class:`ImpressionDecoder` encoded whole: trained
        as :meth:`process` would train the same impressions' records."""
        return self._train([decoded, *self._joined_batches()], {})

    def _train(self, batches: list[CtrBatch], rejected: dict[int, str]) -> BatchResult:
        if not batches:
            return BatchResult(metrics=self._join_metrics(), rejected=rejected)
        results = [self._learn(batch) for batch in batches]
        outputs = [output for result in results for output in result.outputs]
        metrics = {**results[-1].metrics, **self._join_metrics()}
        return BatchResult(outputs=outputs, metrics=metrics, rejected=rejected)

    def _labelled(self, usable: list[Impression]) -> list[CtrBatch]:
        """Impressions that carry ``clicked`` train as they come (no join); those without wait in
        the click join, whose full batches of joined rows train instead."""
        joined = self.click_labels
        if joined is not None:
            joined.impressions([r for r in usable if r.clicked is None])
            usable = [r for r in usable if r.clicked is not None]
        batches = [self.encoder.encode(usable, [int(r.clicked or 0) for r in usable])] if usable else []
        return batches + self._joined_batches()

    def _joined_batches(self) -> list[CtrBatch]:
        """The click join's full batches of joined rows, ready to train."""
        return self.click_labels.batches() if self.click_labels is not None else []

    def _join_metrics(self) -> dict[str, float]:
        return self.click_labels.metrics() if self.click_labels is not None else {}

    def _learn(self, batch: CtrBatch) -> BatchResult:
        """One training step with the lifecycle around it: probation, promotion, due rollbacks."""
        outputs = self.lifecycle.watch(batch)
        due = self.history.serving is None or self.clock() - self._last_swap >= self.swap_interval_s
        candidate = self.lifecycle.freeze() if due else None  # before the batch it is validated on
        metrics = self.learner.learn(batch)
        if candidate is not None:
            outputs += self.lifecycle.consider(candidate, metrics, batch)
            self._last_swap = self.clock()
        outputs += self._apply_due_rollbacks()
        self.lifecycle.learned()
        return BatchResult(outputs=outputs, metrics=metrics)

    def _unusable(self, record: Record) -> str | None:
        if not isinstance(record, Impression):
            return f"expected an impression, got {type(record).__name__}"
        if record.clicked is None and self.click_labels is None:
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
        applied, rejected = self.apply_control(records)
        rollbacks = [Rollback.of(o) for o in applied if o.kind == ROLLBACK and o.seq not in self.pending]
        outputs = [self._announce(rollbacks[-1])] if rollbacks and self._serves(rollbacks[-1]) else []
        return BatchResult(outputs=outputs, rejected=rejected)

    def swap(self, metrics: dict[str, float] | None = None) -> ModelVersion:
        """Freeze the trained model as a new version and make it serve; return it."""
        learner = self.learner
        version = self.history.publish(learner.scorer(), learner.samples_seen, learner.steps, metrics or {})
        self.lifecycle.published(version, {}, "swapped in directly, without validation")
        self._last_swap = self.clock()
        return version

    def update_output(self, version: ModelVersion, rollback: bool = False) -> Output:
        """The ``model-updates`` record announcing ``version`` (``rollback``: an older one again)."""
        update = encode_update(
            self.name, version, self._update_info(rollback), self.update_store, self.inline_limit
        )
        prune_updates(self.update_store, self.history.numbers())
        return Output(topic_name("model-updates"), self.name, update)

    def _update_info(self, rollback: bool) -> dict[str, Any]:
        """What a replica needs beside the weights (``rollback``: serve it even though older)."""
        return {
            "model": self.learner.name,
            "spec": asdict(self.spec),
            "swap_interval_s": self.swap_interval_s,
            "rollback": rollback,
        }

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

    async def serve_version(self, action: str, number: int | None) -> dict[str, Any]:
        """``POST /models/ctr/{promote,rollback}``: serve a kept version by hand, durable like a rollback."""
        outcome = await self.run_locked(self._decide_rollback, number, action)
        await self.publish_outcome(outcome)
        return {"serving": outcome.data["version"], "was": outcome.data["rolled_back_from"], "action": action}

    def lineage_body(self) -> dict[str, Any]:
        """This service's value in ``GET /models``; call holding the lock."""
        return self.lifecycle.lineage.body()

    def _decide_rollback(self, number: int | None = None, action: str = "rolled_back") -> Outcome:
        """The outcome serving ``number`` (default: the previous kept version, or for ``promoted``
        the newest), its target's weights written to the checkpoint store first.

        With the weights durable, a replay onto a state that lacks the target (a checkpoint older
        than the decision, versions renumbered by a re-batched replay) restores the same model.
        """
        try:
            history = self.history
            target = kept_target(history.versions, history.serving, action, number, lambda v: v.number)
        except NotKept as exc:
            raise ApiError(409, str(exc)) from None
        update = encode_update(self.name, target, self._update_info(True), self.update_store / "rollbacks", 0)
        rollback = Rollback(target.number, self.model_version(), self.learner.samples_seen, update, action)
        return self.new_outcome(ROLLBACK, key=self.name, data=rollback.data(), ts=time.time())

    def apply_outcome(self, outcome: Outcome) -> None:
        """Serve the version a rollback names and reset training to it (idempotent).

        On a replay that reaches the control topic before the impressions trained before the
        decision, the rollback waits (in the state) until training has seen as many samples.
        """
        if outcome.kind != ROLLBACK:
            super().apply_outcome(outcome)  # refuses kinds this service does not take
        rollback = Rollback.of(outcome)
        if self.learner.samples_seen < rollback.trained_samples:
            self.pending = {**self.pending, outcome.seq: outcome}
        else:
            self._roll_back(rollback)

    def _roll_back(self, rollback: Rollback) -> None:
        update = rollback.update
        version = self.history.find(rollback.version, float(update.info["created"]))
        if version is None:
            try:
                version = version_from_update(update, self.checkpoint_root, self.learner.scorer_from)
            except UpdateError as exc:
                raise ApiError(409, f"cannot roll back: {exc}") from None
        self.history.adopt(version, rollback.rolled_back_from)
        self.learner.restore(version.scorer)
        self.lifecycle.served_by_hand(version, rollback.action, rollback.rolled_back_from)
        self._last_swap = self.clock()

    def _apply_due_rollbacks(self) -> list[Output]:
        """Apply waiting rollbacks once training has caught up with them; announce the last one."""
        waiting = {seq: Rollback.of(outcome) for seq, outcome in sorted(self.pending.items())}
        due = {seq: r for seq, r in waiting.items() if r.trained_samples <= self.learner.samples_seen}
        if not due:
            return []
        self.pending = {seq: outcome for seq, outcome in self.pending.items() if seq not in due}
        applied = []
        for seq, rollback in due.items():
            try:
                self._roll_back(rollback)
            except ApiError as exc:  # its weights are gone: nothing to serve, training goes on
                log.error("ctr: rollback %d cannot be applied: %s", seq, exc.message)
            else:
                applied.append(rollback)
        return [self._announce(applied[-1])] if applied else []

    def _serves(self, rollback: Rollback) -> bool:
        serving = self.history.serving
        return serving is not None and (serving.number, serving.created) == (
            rollback.version,
            rollback.update.info["created"],
        )

    def _announce(self, rollback: Rollback) -> Output:
        return Output(topic_name("model-updates"), self.name, rollback.update)

    def on_drift(self, action: str) -> None:
        """A drift alarm's action (:class:`streams.drift.Adapts`): see :meth:`CtrLifecycle.on_drift`."""
        self.lifecycle.on_drift(action)

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
        return {
            "learner": self.learner.state_dict(),
            "history": self.history.state_dict(),
            "pending_rollbacks": [o.model_dump(mode="json", by_alias=True) for o in self.pending.values()],
            "lifecycle": self.lifecycle.state_dict(),
            "click_join": self.click_labels.state_dict() if self.click_labels is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.history.load_state_dict(state["history"], self.learner.scorer_from)
        saved = [
            parse_record(o, Outcome) for o in state.get("pending_rollbacks", [])
        ]  # absent in older states
        self.pending = {o.seq: o for o in saved if isinstance(o, Outcome)}
        if "lifecycle" in state:  # absent before the promotion gate
            self.lifecycle.load_state_dict(state["lifecycle"])
        if self.click_labels is not None:
            self.click_labels.load_state_dict(state.get("click_join"))
        self._last_swap = self.clock()


_SERVICE_OPTIONS = (
    "batch_window_s", "swap_interval_s", "keep_versions", "max_candidates", "click_window_s", "threads",
    "serving_precision",
)  # fmt: skip
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
    check_precision(service_options.get("serving_precision", "auto"))
    service_options["lifecycle"] = LifecycleConfig.pop_from(options)
    config_fields = {f.name for f in fields(CtrConfig)}
    unknown = sorted(set(options) - config_fields)
    if unknown:
        lifecycle = {f.name for f in fields(LifecycleConfig)}
        known = sorted(config_fields | set(_SERVICE_OPTIONS) | set(_SPEC_OPTIONS) | lifecycle)
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
    ``keep_versions``, ``max_candidates``, ``click_window_s`` (seconds of event time an impression
    without ``clicked`` waits for its click on the clicks topic; 0, the default: no join),
    ``threads`` (torch intra-op threads for training; unset: torch's choice, see
    :mod:`models.ctr.threads`), ``serving_precision`` (the serving replicas' option, checked and
    ignored here: :mod:`models.ctr.serving_precision`), ``categorical_fields`` /
    ``dense_fields`` / ``buckets`` (default: the MovieLens-100K impressions), and any
    :class:`CtrConfig` field (``cowclip``, ``embed_lr`` and ``dense_lr`` (default 1e-3 here),
    ``l2``, ``warmup_samples`` (default 100,000), ...). The worker passes ``data_dir = <home>/ctr``;
    large model updates go to the deployment's checkpoint store (``DRIFTLINE_CHECKPOINT_STORE``,
    else ``<home>/checkpoints``).
    """
    learner, service_options = learner_from_options(**options)
    use_trainer_threads(service_options.pop("threads", None))
    service_options.pop("serving_precision", None)  # the replicas' option
    root = Settings.from_env(home=data_dir.parent).checkpoint_root
    return CtrService(learner, batch_size=learner.config.batch_size, checkpoint_root=root, **service_options)


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Field names from a list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())

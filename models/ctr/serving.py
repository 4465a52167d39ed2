"""The CTR serving part of a replica: scores with the trainer's latest version, never trains.

A replica (``roles/serving.py`` hosts it) feeds every record of the ``model-updates`` topic to
:meth:`CtrServing.apply`; :meth:`CtrServing.apply_update` checks the bytes against the update's
sha256, rebuilds the frozen scorer and swaps it in by one reference assignment, so a request in
flight keeps the version it started with. Until the replica has read the topic up to where it stood
at start, it answers 503: it would otherwise serve each older version on its way to the latest.
Rollback is the trainer's decision: here ``POST /ctr/rollback`` answers 409 naming the trainer, and
the trainer's rollback reaches the replica as an update marked ``rollback``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.ctr.features import CtrBatch, FeatureSpec, RunningNorm
from models.ctr.layers import FieldEmbedding
from models.ctr.learner import CtrLearner, CtrScorer
from models.ctr.routes import CtrRoutes, versions_body
from models.ctr.service import learner_from_options
from models.ctr.serving_precision import in_precision, resolve_precision
from models.ctr.versions import ModelVersion, UpdateError, version_from_update
from streams.schemas import ModelUpdate, Record
from streams.service import Route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaScorer(CtrScorer):
    """A scorer that only ever scores: its network stays in eval mode with no gradients, so
    :meth:`predict` skips the learner's train/eval switch (0.07 ms of a 1.3 ms predict, measured:
    it walks every module twice) and runs under ``inference_mode`` throughout."""

    def predict(self, batch: CtrBatch) -> np.ndarray:
        with torch.inference_mode():
            dense = self.normaliser.transform(batch.dense).to(self.device)
            logits = self.net(batch.categorical.to(self.device), dense)
        return torch.sigmoid(logits).double().cpu().numpy()


def replica_scorer(
    learner: CtrLearner, state: dict[str, Any], precision: torch.dtype = torch.float32
) -> ReplicaScorer:
    """A :class:`ReplicaScorer` of a saved scorer state, its network built without initialising it,
    its DNN in ``precision`` (:mod:`models.ctr.serving_precision`).

    ``CtrLearner.scorer_from`` initialises a fresh network at random and then overwrites every
    weight: 15 ms of CPU per version, taken from the queries a replica answers on the same core.
    Here the network is built on the ``meta`` device (shapes only), the loaded tensors are assigned
    to it as they are, and the embeddings' field offsets, which are not saved, are set again. A
    state that does not fit raises ``KeyError`` or ``RuntimeError``, as ``scorer_from`` does.
    """
    with torch.device("meta"):
        net = learner.build_net()
    net.load_state_dict(state["net"], assign=True)
    for table in net.modules():
        if isinstance(table, FieldEmbedding):
            table.offsets = table.field_offsets()
    normaliser = RunningNorm(len(learner.spec.dense))
    normaliser.load_state_dict(state["normaliser"])
    net = in_precision(net.to(learner.device), precision).eval().requires_grad_(False)
    return ReplicaScorer(net, normaliser, learner.device)


@dataclass(frozen=True)
class Served:
    """What a replica serves, replaced whole: the version and the trainer's swap interval."""

    version: ModelVersion
    swap_interval_s: float


class CtrServing:
    """Serving part for replicas: ``/ctr/score`` and ``GET /ctr/versions`` from model updates."""

    name = "ctr"
    follows = "model-updates"
    record_type = ModelUpdate

    def __init__(
        self,
        learner: CtrLearner,
        checkpoint_root: Path,
        max_candidates: int = 10_000,
        precision: torch.dtype = torch.float32,
    ) -> None:
        #: Builds the network that loaded weights go into; never trained here.
        self.learner = learner
        self.checkpoint_root = checkpoint_root
        #: What the DNN scores in (``ctr.serving_precision``).
        self.precision = precision
        self._served: Served | None = None
        self._caught_up = False
        self.api = CtrRoutes(
            model=learner.name,
            spec=learner.spec,
            max_candidates=max_candidates,
            serving=self._serving_version,
            versions=self._versions,
            not_ready="no CTR model to serve yet: catching up with the trainer's model updates",
            inline=True,
        )

    def routes(self) -> list[Route]:
        return self.api.routes()

    def ready(self) -> bool:
        return self._caught_up and self._served is not None

    def caught_up(self) -> None:
        self._caught_up = True

    def apply(self, record: Record) -> None:
        """Serve ``record`` if it is an update of this service (other services share the topic)."""
        if not isinstance(record, ModelUpdate):
            raise UpdateError(f"expected a model update, got {type(record).__name__}")
        if record.service == self.name:
            self.apply_update(record)

    def model_version(self) -> int:
        served = self._served
        return served.version.number if served else 0

    def apply_update(self, update: ModelUpdate) -> None:
        """Load ``update`` and serve it; skip one not newer unless it is a rollback.

        Raises :class:`UpdateError` (nothing changes) when the update is for another service, its
        bytes do not match its sha256, or it was trained for another model or feature spec.
        """
        if update.service != self.name:
            raise UpdateError(f"model update of service {update.service!r} sent to the {self.name!r} replica")
        rollback = bool(update.info.get("rollback", False))
        if update.version <= self.model_version() and not rollback:
            log.debug("%s: ignoring update v%d, serving v%d", self.name, update.version, self.model_version())
            return
        self._check_model(update)
        swap_interval = update.info.get("swap_interval_s")
        if not isinstance(swap_interval, int | float):
            raise UpdateError(f"model update {self.name} v{update.version} has no info.swap_interval_s")
        version = version_from_update(update, self.checkpoint_root, self._scorer)
        self._served = Served(version, float(swap_interval))  # the swap: one reference assignment
        log.info("%s: serving v%d%s", self.name, update.version, " (rollback)" if rollback else "")

    def _scorer(self, state: dict[str, Any]) -> ReplicaScorer:
        return replica_scorer(self.learner, state, self.precision)

    def _check_model(self, update: ModelUpdate) -> None:
        model, spec = update.info.get("model"), update.info.get("spec")
        mine = asdict(self.learner.spec)
        try:
            same_spec = isinstance(spec, dict) and FeatureSpec.from_dict(spec) == self.learner.spec
        except (KeyError, TypeError, ValueError):
            same_spec = False
        if model != self.learner.name or not same_spec:
            raise UpdateError(
                f"model update {self.name} v{update.version} is a {model!r} model on features {spec}; "
                f"this replica serves {self.learner.name!r} on {mine} (give it the trainer's ctr options)"
            )

    def _serving_version(self) -> ModelVersion | None:
        served = self._served
        return served.version if served and self._caught_up else None

    async def _versions(self) -> dict[str, Any]:
        served = self._served  # one read: the body describes one version
        if served is None:
            return versions_body(self.learner.name, None, [], 0.0, 0)
        version = served.version
        trained = version.samples_seen
        return versions_body(self.learner.name, version, [version], served.swap_interval_s, trained)


def build_serving(checkpoint_root: Path, **options: Any) -> CtrServing:
    """A CTR serving part from the same ``ctr.*`` options as the trainer's ``build_service``.

    Options that only matter for training (learning rates, swap interval, ...) are accepted and
    ignored, so one option list configures both roles. A replica predicts one request at a time on
    its event loop, with one intra-op thread: a 100-candidate forward pass is too small to gain
    from more, and on a shared machine a second thread made it up to 30x slower (measured).
    ``serving_precision`` (auto | float32 | bfloat16) is what the DNN scores in.
    """
    torch.set_num_threads(1)
    learner, service_options = learner_from_options(**options)
    precision = resolve_precision(service_options.get("serving_precision", "auto"), learner.device)
    log.info("ctr replica scores in %s", str(precision).removeprefix("torch."))
    max_candidates = int(service_options.get("max_candidates", 10_000))
    return CtrServing(learner, checkpoint_root, max_candidates, precision)

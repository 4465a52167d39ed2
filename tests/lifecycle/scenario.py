"""A CTR trainer fed MovieLens-100K through the runner, with label flips injected (synthetic change).

The real ratings keep their order; only the injected flips (clicked -> 1 - clicked on chosen
batches) are synthetic. One batch is 500 impressions and one tick of the service clock, so with
``swap_interval_s=10`` a candidate is considered every 10 batches. :func:`feed_live` instead replays
the lifecycle demo's clean stream with the varying batches a live worker sees
(:class:`bench.lifecycle_replay.LiveStream`).
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lifecycle_replay import LiveStream, feed
from models.ctr import movielens
from models.ctr.promotion import scale_learning_rates
from models.ctr.service import CtrService, build_service
from streams.drift import DriftMonitor, DriftSettings
from streams.metrics import WorkerMetrics
from streams.runner import Incoming, ServiceRunner
from streams.schemas import Impression

BATCH = 500
OPTIONS: dict[str, Any] = {
    "swap_interval_s": 10,
    "embed_dim": 8,
    "hidden": [32, 32],
    "batch_size": BATCH,
    "embed_lr": 1e-2,
    "dense_lr": 1e-2,
    "warmup_samples": 0,
    "rollback_samples": 1500,
    "rollback_margin": 0.08,
    "faster_steps": 20,
}


class NullSink:
    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        return None


@dataclass
class Trainer:
    """A CTR service, its runner and its drift monitor, driven batch by batch."""

    service: CtrService
    runner: ServiceRunner
    clock: list[float]
    #: Per applied batch: (batch number, progressive logloss, serving version, wall time).
    log: list[tuple[int, float, int, float]] = field(default_factory=list)

    @property
    def drift(self) -> DriftMonitor:
        assert self.runner.drift is not None
        return self.runner.drift

    def feed(
        self, rows: list[Impression], batches: range, flipped: Callable[[int], bool], boost: float = 1.0
    ) -> None:
        """Apply ``batches``; those ``flipped`` says have their labels flipped and are trained
        with the learning rates times ``boost`` (an exploding learning rate)."""
        asyncio.run(self._feed(rows, batches, flipped, boost))

    async def _feed(
        self, rows: list[Impression], batches: range, flipped: Callable[[int], bool], boost: float
    ) -> None:
        subscription = self.service.subscriptions()[0]
        for b in batches:
            chunk = rows[b * BATCH : (b + 1) * BATCH]
            corrupt = flipped(b)
            if corrupt:
                chunk = [r.model_copy(update={"clicked": 1 - int(r.clicked or 0)}) for r in chunk]
                scale_learning_rates(self.service.learner, boost)
            events = [
                Incoming(subscription.topic, 0, b * BATCH + i, None, r.to_bytes())
                for i, r in enumerate(chunk)
            ]
            result = await self.runner.apply(subscription, events)
            assert result is not None
            if corrupt:
                scale_learning_rates(self.service.learner, 1 / boost)
            self.clock[0] += 1
            self.log.append((b, result.metrics["logloss"], self.service.model_version(), time.time()))

    def events(self, action: str) -> list[tuple[int, dict[str, Any]]]:
        """(version, history entry) of every ``action`` in the lineage, in time order."""
        found = [(r.version, h) for r in self.service.lifecycle.lineage.records for h in r.history]
        return sorted([(v, h) for v, h in found if h["action"] == action], key=lambda vh: vh[1]["at"])

    def batch_at(self, at: float) -> int:
        """The batch being applied at wall time ``at``."""
        return next(b for b, _, _, done in self.log if done >= at)


def rows() -> list[Impression]:
    return movielens.load_impressions()


def trainer(
    drift: DriftSettings,
    state: tuple[dict[str, Any], dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> Trainer:
    """A fresh trainer (``state``: a service and drift state to start from, at clock tick 60;
    ``options``: the service's, :data:`OPTIONS` by default)."""
    home = Path(tempfile.mkdtemp(prefix="driftline-lifecycle-"))
    service = build_service(home / "ctr", **(OPTIONS if options is None else options))
    clock = [60.0 if state else 0.0]
    service.clock = lambda: clock[0]
    runner = ServiceRunner(service, home / "checkpoints", NullSink(), WorkerMetrics())
    runner.drift = DriftMonitor("ctr", "logloss", settings=drift)
    if state is not None:
        service.load_state_dict(copy.deepcopy(state[0]))
        runner.drift.load_state_dict(state[1])
    return Trainer(service, runner, clock)


def feed_live(run: Trainer, rows: list[Impression], stream: LiveStream, until: float) -> None:
    """Apply ``stream``'s batches until ``until`` seconds, the service clock at each dispatch time."""
    for number, (_, metrics) in enumerate(feed(run.runner, run.clock, rows, stream, until)):
        run.log.append((number, metrics["logloss"], run.service.model_version(), time.time()))

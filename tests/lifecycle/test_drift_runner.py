"""The runner's drift monitor: fed every batch, exported as metrics, checkpointed with the service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from streams.drift import DriftMonitor, DriftSettings
from streams.metrics import WorkerMetrics
from streams.runner import Incoming, ServiceRunner
from streams.schemas import Observation, Record
from streams.service import BatchResult, ModelService, Subscription
from streams.topics import topic_name

TOPIC = topic_name("observations")


class ErrorEcho(ModelService):
    """A 'forecast' whose per-batch MSE is the first value of the batch's first observation."""

    name = "forecast"

    def __init__(self) -> None:
        super().__init__()
        self.drift_actions: list[str] = []

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(TOPIC, Observation)]

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        assert isinstance(records[0], Observation)
        return BatchResult(metrics={"mse": records[0].values[0]})

    def on_drift(self, action: str) -> None:
        self.drift_actions.append(action)

    def state_dict(self) -> dict[str, Any]:
        return {"actions": list(self.drift_actions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drift_actions = list(state["actions"])


class NullSink:
    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        return None


def runner(root: Path, metrics: WorkerMetrics, action: str = "warm-restart") -> ServiceRunner:
    made = ServiceRunner(ErrorEcho(), root, NullSink(), metrics)
    made.drift = DriftMonitor("forecast", "mse", settings=DriftSettings(action=action, hold=5))
    return made


def feed(run: ServiceRunner, errors: list[float], start: int) -> None:
    async def go() -> None:
        subscription = run.service.subscriptions()[0]
        for i, error in enumerate(errors):
            value = Observation(series="s", ts=0, values=[error]).to_bytes()
            await run.apply(subscription, [Incoming(TOPIC, 0, start + i, b"s", value)])
        await run.checkpoint()

    asyncio.run(go())


def test_an_alarm_acts_shows_in_metrics_and_survives_a_restart(tmp_path: Path) -> None:
    metrics = WorkerMetrics()
    first = runner(tmp_path, metrics)
    feed(first, [1.0, 1.1, 0.9] * 10 + [3.0] * 3, start=0)  # synthetic: the error triples
    assert first.drift is not None and first.drift.alarms == 1 and first.drift.in_alarm
    assert first.service.drift_actions == ["warm-restart"]  # type: ignore[attr-defined]
    assert first.service.batch_offsets == {f"{TOPIC}:0": 32}
    text = metrics.render().decode()
    assert 'driftline_drift_alarms_total{service="forecast"} 1.0' in text
    assert 'driftline_drift_in_alarm{service="forecast"} 1.0' in text
    restarted = runner(tmp_path, WorkerMetrics())
    restarted.restore()
    assert restarted.drift is not None
    assert restarted.drift.state_dict() == first.drift.state_dict()
    feed(restarted, [3.0] * 5, start=33)  # the new level is the baseline now: no second alarm
    assert restarted.drift.alarms == 1 and not restarted.drift.in_alarm


def test_the_plain_alarm_action_still_reaches_the_service(tmp_path: Path) -> None:
    """``alarm`` adapts nothing, but the service hears it (CTR holds a probation on it)."""
    run = runner(tmp_path, WorkerMetrics(), action="alarm")
    feed(run, [1.0, 1.1, 0.9] * 10 + [3.0] * 3, start=0)  # synthetic: the error triples
    assert run.service.drift_actions == ["alarm"]  # type: ignore[attr-defined]

"""CtrService under the worker's ServiceRunner: dead letters with reasons, restart without loss or repeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from models.ctr.service import NO_LABEL, CtrService
from streams.metrics import WorkerMetrics
from streams.runner import CheckpointPolicy, Incoming, ServiceRunner
from streams.schemas import DeadLetter, parse_record
from streams.service import Subscription
from streams.topics import topic_name
from tests.models.synthetic import impressions, make_service

TOPIC = topic_name("impressions")


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.sent.append((topic, value))


def events(first_offset: int, count: int, seed: int, labelled: bool = True) -> list[Incoming]:
    rows = impressions(count, seed=seed, labelled=labelled)
    return [Incoming(TOPIC, 0, first_offset + i, None, row.to_bytes()) for i, row in enumerate(rows)]


def runner_for(service: CtrService, root: Path, sink: ListSink) -> ServiceRunner:
    runner = ServiceRunner(service, root, sink, WorkerMetrics(), CheckpointPolicy(interval_s=0.0, events=1))
    runner.restore()
    return runner


def apply(runner: ServiceRunner, subscription: Subscription, events: list[Incoming]) -> None:
    async def go() -> None:
        await runner.apply(subscription, events)
        await runner.checkpoint()

    asyncio.run(go())


def test_unlabelled_impressions_are_dead_lettered_and_a_restart_applies_nothing_twice(tmp_path: Path) -> None:
    sink = ListSink()
    service, _ = make_service(tmp_path, swap_interval_s=0.0)
    runner = runner_for(service, tmp_path / "ckpt", sink)
    subscription = service.subscriptions()[0]
    first = [*events(0, 100, seed=1), *events(100, 2, seed=2, labelled=False)]
    apply(runner, subscription, first)
    letters = [parse_record(value) for topic, value in sink.sent if topic == topic_name("dead-letter")]
    assert [(letter.offset, letter.reason) for letter in letters if isinstance(letter, DeadLetter)] == [
        (100, NO_LABEL),
        (101, NO_LABEL),
    ]
    assert service.learner.samples_seen == 100

    restarted, _ = make_service(tmp_path, swap_interval_s=0.0, seed=7)
    runner = runner_for(restarted, tmp_path / "ckpt", ListSink())
    assert restarted.learner.samples_seen == 100 and restarted.model_version() == service.model_version()
    apply(runner, subscription, [*first, *events(102, 50, seed=3)])  # redelivery + new events
    assert restarted.learner.samples_seen == 150
    assert restarted.learner.steps == 2

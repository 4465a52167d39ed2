"""The click join inside the CTR service: under the runner with a crash mid-window, and through Kafka."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from models.ctr.features import CtrBatch
from models.ctr.service import CtrService
from streams.metrics import WorkerMetrics
from streams.runner import CheckpointPolicy, Incoming, ServiceRunner
from streams.schemas import Click, Impression, Record
from streams.topics import topic_name
from tests.models.synthetic import OPTIONS, impressions, make_service

IMPRESSIONS, CLICKS = topic_name("impressions"), topic_name("clicks")
WINDOW_S, DELAY_S, CHUNK = 10.0, 3.0, 40


def stream(n: int, seed: int) -> tuple[list[Impression], list[Click]]:
    """Impressions one second apart without ``clicked``, and a click ``DELAY_S`` later for each one
    the synthetic teacher clicked."""
    shown = impressions(n, seed=seed)
    clicks = [Click(impression_id=r.id, ts=r.ts + DELAY_S) for r in shown if r.clicked]
    return [r.model_copy(update={"clicked": None}) for r in shown], clicks


def batches(n: int, seed: int) -> list[tuple[str, list[Incoming]]]:
    """The stream as the runner gets it: chunks of impressions, each followed by the clicks made
    meanwhile (offsets count per topic, so a redelivery is recognised)."""
    shown, clicks = stream(n, seed)
    out: list[tuple[str, list[Incoming]]] = []
    taken = 0
    for start in range(0, n, CHUNK):
        chunk = shown[start : start + CHUNK]
        out.append((IMPRESSIONS, events(IMPRESSIONS, start, chunk)))
        made = [c for c in clicks[taken:] if c.ts <= chunk[-1].ts]
        out.append((CLICKS, events(CLICKS, taken, made)))
        taken += len(made)
    return out


def events(topic: str, first: int, records: list[Impression] | list[Click]) -> list[Incoming]:
    return [Incoming(topic, 0, first + i, None, r.to_bytes()) for i, r in enumerate(records)]


class ListSink:
    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        return None


def recording(tmp_path: Path) -> tuple[CtrService, list[float]]:
    """A service with a click window whose learner notes each trained row (its unique dense ``x``)."""
    service, _ = make_service(tmp_path, batch_size=32, click_window_s=WINDOW_S)
    learned: list[float] = []
    learn = service.learner.learn

    def noting(batch: CtrBatch) -> dict[str, float]:
        learned.extend(batch.dense[:, 0].tolist())
        return learn(batch)

    service.learner.learn = noting  # type: ignore[method-assign]
    return service, learned


def run(runner: ServiceRunner, todo: list[tuple[str, list[Incoming]]], checkpoint: bool) -> None:
    subscriptions = {s.topic: s for s in runner.service.subscriptions()}

    async def go() -> None:
        for topic, chunk in todo:
            await runner.apply(subscriptions[topic], chunk)
        if checkpoint:
            await runner.checkpoint()

    asyncio.run(go())


def runner_for(service: CtrService, root: Path) -> ServiceRunner:
    runner = ServiceRunner(
        service, root, ListSink(), WorkerMetrics(), CheckpointPolicy(interval_s=1e9, events=10**9)
    )
    runner.restore()
    return runner


def test_a_crash_mid_window_learns_every_joined_impression_exactly_once(tmp_path: Path) -> None:
    todo = batches(600, seed=4)
    straight, learned_straight = recording(tmp_path / "straight")
    run(runner_for(straight, tmp_path / "straight-ckpt"), todo, checkpoint=False)
    counts = straight.click_labels.join.counts  # type: ignore[union-attr]
    assert counts["positives"] > 100 and counts["negatives"] > 200 and straight.click_labels.join.pending > 0  # type: ignore[union-attr]

    crashed, learned_crashed = recording(tmp_path / "crashed")
    runner = runner_for(crashed, tmp_path / "ckpt")
    run(runner, todo[:7], checkpoint=True)  # windows are open: impressions wait for their clicks
    durable = len(learned_crashed)
    assert crashed.click_labels.join.pending > 0  # type: ignore[union-attr]
    run(runner, todo[7:12], checkpoint=False)  # applied, then lost with the process
    assert len(learned_crashed) > durable

    restarted, learned_after = recording(tmp_path / "crashed")
    run(runner_for(restarted, tmp_path / "ckpt"), todo, checkpoint=False)  # Kafka redelivers everything
    assert learned_crashed[:durable] + learned_after == learned_straight, "each impression learned once"
    assert len(set(learned_straight)) == len(learned_straight)
    assert restarted.learner.samples_seen == straight.learner.samples_seen == len(learned_straight)
    assert restarted.click_labels.join.counts == counts  # type: ignore[union-attr]


def test_labelled_impressions_skip_the_join(tmp_path: Path) -> None:
    service, learned = recording(tmp_path)
    rows: list[Record] = [*impressions(40, seed=1)]
    result = service.process(IMPRESSIONS, rows)
    assert len(learned) == 40 and service.click_labels.join.pending == 0  # type: ignore[union-attr]
    assert result.metrics["join_pending"] == 0 and "auc" in result.metrics


def test_without_a_click_window_nothing_subscribes_to_clicks(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path)
    assert service.click_labels is None
    assert CLICKS not in {s.topic for s in service.subscriptions()}
    with pytest.raises(ValueError, match="positive number of seconds"):
        make_service(tmp_path, click_window_s=-1)


@pytest.mark.kafka
def test_a_worker_joins_clicks_from_kafka(kafka, worker_factory) -> None:
    from streams.producer import make_producer, send_all
    from streams.topics import ensure_topics
    from tests.streams.helpers import get_json, get_text, metric_value, wait_until

    ensure_topics(kafka.bootstrap, partitions=1)  # one partition: each topic arrives in ts order
    options = [f"ctr.{key}={json.dumps(value)}" for key, value in OPTIONS.items()]
    worker = worker_factory("ctr", [*options, "ctr.batch_size=32", f"ctr.click_window_s={WINDOW_S}",
                                    "ctr.batch_window_s=0.1"])  # fmt: skip
    worker.start()
    shown, clicks = stream(300, seed=5)
    clicked = {c.impression_id for c in clicks}
    unclicked = next(r for r in shown if r.id not in clicked)
    late = Click(impression_id=unclicked.id, ts=unclicked.ts + 2 * WINDOW_S)
    producer = make_producer(kafka.bootstrap)
    try:
        send_all(producer, "impressions", [*shown, shown[-2]], progress=False)  # shown[-2] twice
        send_all(producer, "clicks", [*clicks, late], progress=False)
    finally:
        producer.close()
    # Impressions reach 299 s, clicks 302 s: the windows of impressions up to 289 s are closed.
    negatives = sum(1 for r in shown if r.ts + WINDOW_S <= shown[-1].ts and r.id not in clicked)
    expected = {
        "positives": len(clicks),
        "negatives": negatives,
        "duplicate_impressions": 1,
        "late_clicks": 1,
    }

    def counts() -> dict[str, float | None]:
        text = get_text(f"{worker.base}/metrics")
        return {name: metric_value(text, "driftline_online_metric", service="ctr", metric=f"join_{name}")
                for name in expected}  # fmt: skip

    wait_until(lambda: counts() == expected, timeout_s=60, what=f"join counts {expected}",
               explain=lambda: f"{counts()}\n{worker.log()[-3000:]}")  # fmt: skip
    decided = len(clicks) + negatives
    assert get_json(f"{worker.base}/ctr/versions")[1]["trained_samples"] == decided - decided % 32

"""The exactly-once batch protocol, driven directly (the transport is tested in tests/streams)."""

from __future__ import annotations

import asyncio
import json

import pytest

from streams.metrics import WorkerMetrics
from streams.runner import Incoming, ServiceRunner
from streams.schemas import Observation, Record
from streams.service import BatchResult, Output
from streams.tally import TallyService
from streams.topics import topic_name


class ListSink:
    """Collects what the runner sends, as Kafka would have it."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, dict]] = []
        self.fail = fail

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.sent.append((topic, key, json.loads(value)))


def event(offset: int, value: bytes, partition: int = 0) -> Incoming:
    return Incoming(topic_name("observations"), partition, offset, b"k", value)


def obs(series: str, value: float) -> bytes:
    return Observation(series=series, ts=0, values=[value]).to_bytes()


def run(coro):
    return asyncio.run(coro)


def test_redelivered_events_are_not_applied_twice(tmp_path):
    service = TallyService()
    runner = ServiceRunner(service, tmp_path, ListSink(), WorkerMetrics())
    sub = service.subscriptions()[0]
    run(runner.apply(sub, [event(0, obs("a", 1)), event(1, obs("a", 2))]))
    # After a restart from that checkpoint, Kafka redelivers from an older committed offset.
    restarted = TallyService()
    runner2 = ServiceRunner(restarted, tmp_path, ListSink(), WorkerMetrics())
    assert runner2.restore() == 1
    run(runner2.apply(sub, [event(0, obs("a", 1)), event(1, obs("a", 2)), event(2, obs("a", 4))]))
    assert restarted.counts == {"a": 3} and restarted.sums == {"a": 7.0}
    assert runner2.offsets == {f"{topic_name('observations')}:0": 2}


def test_offsets_are_tracked_per_partition(tmp_path):
    service = TallyService()
    runner = ServiceRunner(service, tmp_path, ListSink(), WorkerMetrics())
    sub = service.subscriptions()[0]
    run(runner.apply(sub, [event(5, obs("a", 1), partition=0), event(3, obs("b", 1), partition=1)]))
    run(runner.apply(sub, [event(3, obs("c", 1), partition=0), event(4, obs("b", 1), partition=1)]))
    assert service.counts == {"a": 1, "b": 2}


def test_invalid_events_are_dead_lettered_with_reason_and_offset(tmp_path):
    sink = ListSink()
    service = TallyService()
    runner = ServiceRunner(service, tmp_path, sink, WorkerMetrics())
    run(runner.apply(service.subscriptions()[0], [event(0, b"nope"), event(1, obs("a", 1)), event(2, None)]))
    letters = [value for topic, _, value in sink.sent if topic == topic_name("dead-letter")]
    assert [(d["offset"], d["payload"]) for d in letters] == [(0, "nope"), (2, "")]
    assert "not valid JSON" in letters[0]["reason"] and "empty event" in letters[1]["reason"]
    assert service.counts == {"a": 1}


class Exploding(TallyService):
    name = "exploding"

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        raise RuntimeError("model diverged")


def test_a_failing_service_dead_letters_the_batch_and_survives(tmp_path):
    sink = ListSink()
    service = Exploding()
    runner = ServiceRunner(service, tmp_path, sink, WorkerMetrics())
    run(runner.apply(service.subscriptions()[0], [event(0, obs("a", 1)), event(1, obs("a", 2))]))
    letters = [value for topic, _, value in sink.sent if topic == topic_name("dead-letter")]
    assert len(letters) == 2 and all("model diverged" in d["reason"] for d in letters)


class Rejecting(TallyService):
    name = "rejecting"

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        forecast = Observation(series="out", ts=0, values=[1.0])
        return BatchResult(
            outputs=[Output(topic_name("forecasts"), "out", forecast)],
            rejected={1: "wrong channel count"},
        )


def test_outputs_are_sent_and_rejections_dead_lettered(tmp_path):
    sink = ListSink()
    service = Rejecting()
    runner = ServiceRunner(service, tmp_path, sink, WorkerMetrics())
    run(runner.apply(service.subscriptions()[0], [event(0, obs("a", 1)), event(1, obs("b", 2))]))
    topics = [topic for topic, _, _ in sink.sent]
    assert topics.count(topic_name("forecasts")) == 1
    letter = next(v for t, _, v in sink.sent if t == topic_name("dead-letter"))
    assert letter["offset"] == 1 and letter["reason"] == "wrong channel count"


def test_nothing_is_checkpointed_when_outputs_cannot_be_delivered(tmp_path):
    service = TallyService()
    runner = ServiceRunner(service, tmp_path, ListSink(fail=True), WorkerMetrics())
    with pytest.raises(ConnectionError):
        run(runner.apply(service.subscriptions()[0], [event(0, b"bad")]))
    assert runner.store.versions() == []


def test_run_locked_waits_for_a_batch_without_blocking_the_event_loop():
    import threading
    import time

    service = TallyService()
    release = threading.Event()

    def long_batch() -> None:
        with service.lock:
            release.wait(5)

    batch = threading.Thread(target=long_batch)
    batch.start()
    time.sleep(0.05)

    async def scenario() -> tuple[int, float]:
        started = time.perf_counter()
        locked = asyncio.ensure_future(service.run_locked(lambda: len(service.counts)))
        await asyncio.sleep(0.2)  # the loop keeps running while the batch holds the lock
        ticked = time.perf_counter() - started
        assert not locked.done()
        release.set()
        return await locked, ticked

    result, ticked = asyncio.run(scenario())
    batch.join()
    assert result == 0 and ticked < 1.0

"""Sends wait for the broker: an output is never reported delivered that Kafka does not hold."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from streams.metrics import WorkerMetrics
from streams.producer import DeliveryError, make_producer, send_all
from streams.runner import EXCERPT_CHARS, Incoming, ServiceRunner
from streams.schemas import Observation, Record
from streams.service import BatchResult, ModelService, Output, Subscription
from streams.sink import KafkaSink, RecordRefused
from streams.topics import ensure_topics, topic_name
from tests.streams.helpers import read_topic

pytestmark = pytest.mark.kafka


@contextlib.contextmanager
def broker_paused(kafka: Any) -> Iterator[None]:
    """The broker process stopped (SIGSTOP) until the block ends: it takes no record meanwhile."""
    kafka.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        kafka.process.send_signal(signal.SIGCONT)


def test_the_sink_returns_once_the_broker_has_the_record_and_not_before(kafka, topic_prefix):
    ensure_topics(kafka.bootstrap)
    topic = topic_name("forecasts")

    async def scenario() -> tuple[bool, bool]:
        sink = KafkaSink(kafka.bootstrap)
        await sink.start()
        try:
            await sink.send(topic, b"k", b'{"ok": 1}')
            with broker_paused(kafka):
                waiting = asyncio.ensure_future(sink.send(topic, b"k", b'{"ok": 2}'))
                await asyncio.sleep(2.0)
                returned_while_paused = waiting.done()
            await asyncio.wait_for(waiting, 60)
            return returned_while_paused, waiting.done()
        finally:
            await sink.stop()

    returned_while_paused, returned = asyncio.run(scenario())
    assert not returned_while_paused, "a send returned although the broker never took the record"
    assert returned
    assert read_topic(kafka.bootstrap, topic, expected=2, timeout_s=10) == [{"ok": 1}, {"ok": 2}]


class FlakyProducer:
    """Fails ``send_and_wait`` with the given errors in turn, then takes the record."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.taken: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.taken.append(value)


def test_retriable_send_errors_are_retried_and_refusals_are_raised_at_once(monkeypatch):
    monkeypatch.setattr("streams.sink.MAX_PAUSE_S", 0.01)
    sink = KafkaSink("unused:9092")
    sink._producer = FlakyProducer(KafkaTimeoutError(), KafkaConnectionError("down"))  # type: ignore[assignment]
    asyncio.run(sink.send("t", None, b"1"))
    assert sink._producer.taken == [b"1"] and sink.problem is None  # type: ignore[attr-defined]

    sink._producer = FlakyProducer(MessageSizeTooLargeError("too large"))  # type: ignore[assignment]
    with pytest.raises(RecordRefused, match="MessageSizeTooLargeError"):
        asyncio.run(sink.send("t", None, b"2" * 10))
    assert sink._producer.taken == []  # type: ignore[attr-defined]


class Oversized(ModelService):
    """Echoes each observation to ``forecasts``; one whose value is negative comes out 2 MiB long,
    larger than the broker takes."""

    name = "oversized"

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(topic_name("observations"), Observation)]

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        outputs = []
        for record in records:
            assert isinstance(record, Observation)
            series = record.series * (2 * 1024**2) if record.values[0] < 0 else record.series
            echo = Observation.model_construct(series=series, ts=record.ts, values=record.values)
            outputs.append(Output(topic_name("forecasts"), record.series, echo))
        return BatchResult(outputs=outputs)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def test_an_output_the_broker_refuses_is_dead_lettered_and_the_batch_completes(
    kafka, topic_prefix, tmp_path: Path
):
    ensure_topics(kafka.bootstrap)
    topic = topic_name("observations")
    events = [
        Incoming(topic, 0, offset, b"k", Observation(series=series, ts=0.0, values=[value]).to_bytes())
        for offset, (series, value) in enumerate([("a", 1.0), ("b", -1.0), ("c", 3.0)])
    ]

    async def scenario() -> ServiceRunner:
        sink = KafkaSink(kafka.bootstrap)
        await sink.start()
        try:
            runner = ServiceRunner(Oversized(), tmp_path, sink, WorkerMetrics())
            await runner.assign([(topic, 0)], 1)
            # Before the fix the refused output was retried forever: the batch never completed.
            await asyncio.wait_for(runner.apply(runner.service.subscriptions()[0], events), 60)
            return runner
        finally:
            await sink.stop()

    runner = asyncio.run(scenario())
    assert runner.offsets == {f"{topic}:0": 2}
    delivered = read_topic(kafka.bootstrap, topic_name("forecasts"), expected=3, timeout_s=10)
    assert sorted(o["series"] for o in delivered) == ["a", "c"]
    (letter,) = read_topic(kafka.bootstrap, topic_name("dead-letter"), expected=2, timeout_s=10)
    assert letter["topic"] == topic_name("forecasts")
    assert (letter["partition"], letter["offset"]) == (-1, -1)  # an output, not a consumed event
    assert "MessageSizeTooLargeError" in letter["reason"] and "not retriable" in letter["reason"]
    assert letter["payload"].startswith('{"schema":"observation/1","series":"bbbb')
    assert len(letter["payload"]) < EXCERPT_CHARS + 100 and "excerpt of 2,097,2" in letter["payload"]


def test_a_replay_raises_when_the_broker_refuses_records(kafka, topic_prefix):
    ensure_topics(kafka.bootstrap)
    # The client lets a ~2 MiB record through; the broker (1 MiB message limit) refuses it.
    producer = make_producer(kafka.bootstrap, max_request_size=8 * 1024**2)
    oversized = Observation.model_construct(series="s" * (2 * 1024**2), ts=0.0, values=[1.0])
    try:
        fine = send_all(
            producer, "observations", [Observation(series="a", ts=0.0, values=[1.0])], progress=False
        )
        assert fine.sent == 1
        with pytest.raises(DeliveryError, match="1 of 1 records were not delivered"):
            send_all(producer, "observations", [oversized], progress=False)
    finally:
        producer.close()

"""Sends wait for the broker: an output is never reported delivered that Kafka does not hold."""

from __future__ import annotations

import asyncio

import pytest

from streams.producer import DeliveryError, make_producer, send_all
from streams.schemas import Observation
from streams.sink import KafkaSink
from streams.topics import ensure_topics, topic_name
from tests.streams.helpers import read_topic

pytestmark = pytest.mark.kafka


def test_the_sink_returns_once_the_broker_has_the_record_and_not_before(kafka, topic_prefix):
    ensure_topics(kafka.bootstrap)
    topic = topic_name("forecasts")

    async def scenario() -> tuple[bool, str | None]:
        sink = KafkaSink(kafka.bootstrap)
        await sink.start()
        try:
            await sink.send(topic, b"k", b'{"ok": 1}')
            # A record the broker cannot take (past the producer's 1 MiB request limit): the send
            # keeps retrying and never returns, so the runner acknowledges nothing past it.
            refused = asyncio.ensure_future(sink.send(topic, b"k", b"x" * (2 * 1024**2)))
            await asyncio.sleep(2.0)
            pending, problem = not refused.done(), sink.problem
            refused.cancel()
            return pending, problem
        finally:
            await sink.stop()

    pending, problem = asyncio.run(scenario())
    assert read_topic(kafka.bootstrap, topic, expected=1, timeout_s=10) == [{"ok": 1}]
    assert pending, "a send returned although the broker never took the record"
    assert problem is not None and "failed, retrying" in problem


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

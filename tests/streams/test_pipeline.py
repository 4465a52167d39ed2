"""End to end on the real broker: produce -> worker -> state -> HTTP, dead letters, crash recovery."""

from __future__ import annotations

import random

import pytest

from streams.producer import make_producer, send_all
from streams.schemas import Observation
from streams.tally import expected_counts
from streams.topics import topic_name
from tests.streams.helpers import get_json, get_text, metric_value, read_topic, wait_until

pytestmark = pytest.mark.kafka


def observations(n: int, series: int, seed: int) -> list[Observation]:
    rng = random.Random(seed)
    return [
        Observation(series=f"s{i % series}", ts=float(i), values=[round(rng.uniform(-5, 5), 3), 1.0])
        for i in range(n)
    ]


def produce(kafka, records) -> None:
    producer = make_producer(kafka.bootstrap)
    try:
        send_all(producer, "observations", records, progress=False)
    finally:
        producer.close()


def assert_tally(worker, expected: dict[str, tuple[int, float]]) -> None:
    for series, (count, total) in expected.items():
        status, body = get_json(f"{worker.base}/tally/{series}")
        assert status == 200, body
        assert body["count"] == count, f"{series}: applied {body['count']} events, produced {count}"
        assert body["sum"] == pytest.approx(total, abs=1e-6)


def test_produce_to_worker_to_http(kafka, worker_factory):
    records = observations(600, series=6, seed=1)
    worker = worker_factory("tally", env={"DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.5"}).start()
    produce(kafka, records)
    wait_until(lambda: get_json(f"{worker.base}/tally")[1]["events"] == 600, what="600 events applied")
    assert_tally(worker, expected_counts(records))

    status, health = get_json(f"{worker.base}/health")
    assert status == 200 and health["status"] == "ok" and "tally" in health["services"]
    metrics = get_text(f"{worker.base}/metrics")
    assert metric_value(metrics, "driftline_events_total", service="tally") == 600
    wait_until(  # checkpoints go by interval (0.5 s here), not by batch
        lambda: (
            (
                metric_value(
                    get_text(f"{worker.base}/metrics"), "driftline_checkpoint_version", service="tally"
                )
                or 0
            )
            >= 1
        ),
        what="a checkpoint",
    )
    status, body = get_json(f"{worker.base}/tally/unknown-series")
    assert status == 404 and "unknown-series" in body["error"]


def test_bad_events_go_to_dead_letter_and_worker_keeps_running(kafka, worker_factory):
    from kafka import KafkaProducer

    worker = worker_factory("tally").start()
    raw = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    topic = topic_name("observations")
    bad = [
        (b"{not json", "not valid JSON"),
        (b'{"schema": "observation/1", "series": "a", "ts": 1, "values": ["NaN"]}', "finite"),
        (b'{"schema": "observation/1", "series": "a", "ts": 1, "values": [1], "extra": 1}', "extra"),
        (b'{"schema": "observation/9", "series": "a", "ts": 1, "values": [1]}', "unknown schema"),
        (b'{"schema": "label/1", "task_id": "t", "query_id": "q", "ts": 1, "grades": {"d": 1}}',
         "does not belong on this topic"),
        (b"[1, 2, 3]", "expected a JSON object"),
    ]  # fmt: skip
    for value, _ in bad:
        raw.send(topic, value=value, key=b"a")
    raw.flush()
    raw.close()
    good = observations(50, series=2, seed=2)
    produce(kafka, good)

    wait_until(lambda: get_json(f"{worker.base}/tally")[1]["events"] == 50, what="good events applied")
    letters = read_topic(kafka.bootstrap, topic_name("dead-letter"), expected=len(bad))
    assert len(letters) == len(bad)
    by_payload = {letter["payload"]: letter for letter in letters}
    for value, reason in bad:
        letter = by_payload[value.decode()]
        assert reason in letter["reason"], letter
        assert letter["topic"] == topic and letter["offset"] >= 0
    metrics = get_text(f"{worker.base}/metrics")
    assert metric_value(metrics, "driftline_dead_letters_total", service="tally") == len(bad)
    assert worker.process.poll() is None, "worker died on bad input"


def test_restart_after_crash_loses_nothing_and_applies_nothing_twice(kafka, worker_factory):
    first = observations(3000, series=8, seed=3)
    # Small batches and checkpoints every 100 events, so the kill lands after some checkpoints.
    frequent = {"DRIFTLINE_CHECKPOINT_EVENTS": "100", "DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.2"}
    worker = worker_factory(
        "tally", ["tally.batch_size=40", "tally.batch_window_s=0.05"], env=frequent
    ).start()
    produce(kafka, first)
    wait_until(lambda: get_json(f"{worker.base}/tally")[1]["events"] >= 800, what="some events applied")
    worker.kill()

    second = observations(1000, series=8, seed=4)
    produce(kafka, second)  # produced while the worker is down
    worker.start()
    assert get_json(f"{worker.base}/health")[1]["services"]["tally"]["restored_checkpoint"] >= 1
    total = len(first) + len(second)
    wait_until(lambda: get_json(f"{worker.base}/tally")[1]["events"] >= total, timeout_s=90, what="catch-up")
    assert get_json(f"{worker.base}/tally")[1]["events"] == total
    assert_tally(worker, expected_counts(first + second))

    # A graceful restart too: state and offsets survive, and nothing is re-applied.
    worker.stop()
    worker.start()
    produce(kafka, observations(10, series=1, seed=5))
    wait_until(
        lambda: get_json(f"{worker.base}/tally")[1]["events"] == total + 10, what="post-restart events"
    )
    restored = get_json(f"{worker.base}/health")[1]["services"]["tally"]["restored_checkpoint"]
    assert restored is not None and restored > 1

"""SIGKILL at each step of the runner protocol, then restart: nothing lost, nothing applied twice.

The tally service with ``emit`` on sends a ``tallied/1`` output per event (the running count), and
bad events go to the dead-letter topic, so each crash is checked on all three promises: every
event applied once (exact per-series counts and sums), every output and dead letter present at
least once, and no offset skipped (the applied offsets reach the end of every partition).
"""

from __future__ import annotations

import json
import random
import time

import pytest
from kafka import KafkaProducer

from streams.faults import CRASH_POINTS
from streams.producer import make_producer, send_all
from streams.schemas import Observation
from streams.tally import expected_counts
from streams.topics import ensure_topics, topic_name
from tests.streams.helpers import get_json, get_text, read_topic, wait_until

pytestmark = pytest.mark.kafka

SERIES = 5
PARTITIONS = 3
#: Small batches and checkpoints every 150 events, so that every step is reached many times.
OPTIONS = ["tally.emit=true", "tally.batch_size=50", "tally.batch_window_s=0.02"]
CHECKPOINTS = {"DRIFTLINE_CHECKPOINT_EVENTS": "150", "DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.2"}


def observations(n: int, seed: int) -> list[Observation]:
    rng = random.Random(seed)
    return [
        Observation(series=f"s{i % SERIES}", ts=float(i), values=[round(rng.uniform(-5, 5), 3)])
        for i in range(n)
    ]


def produce(bootstrap: str, records: list[Observation], bad_every: int = 0) -> int:
    """Send ``records`` in order, with an undecodable event after every ``bad_every``; return how many bad."""
    producer = make_producer(bootstrap)
    raw = KafkaProducer(bootstrap_servers=bootstrap)
    bad = 0
    try:
        for start in range(0, len(records), bad_every or len(records)):
            send_all(
                producer, "observations", records[start : start + (bad_every or len(records))], progress=False
            )
            producer.flush()
            if bad_every:
                raw.send(topic_name("observations"), value=b"{broken", key=b"s0")
                raw.flush()
                bad += 1
    finally:
        producer.close()
        raw.close()
    return bad


def lag(worker) -> list[float]:
    lines = get_text(f"{worker.base}/metrics").splitlines()
    return [
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("driftline_consumer_lag{") and 'service="tally"' in line
    ]


def applied(worker, series: int) -> int:
    assert worker.process.poll() is None, (
        f"worker exited with {worker.process.returncode}: {worker.log()[-3000:]}"
    )
    total = 0
    for i in range(series):
        status, body = get_json(f"{worker.base}/tally/s{i}")
        total += body["count"] if status == 200 else 0
    return total


@pytest.mark.parametrize("step", CRASH_POINTS)
def test_a_crash_at_each_step_loses_nothing_and_applies_nothing_twice(kafka, worker_factory, step):
    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    worker = worker_factory("tally", OPTIONS, env=CHECKPOINTS)
    worker.start(DRIFTLINE_CRASH_AT=f"{step}@3")
    first = observations(1500, seed=1)
    bad = produce(kafka.bootstrap, first, bad_every=500)
    assert worker.process is not None
    worker.process.wait(timeout=60)  # it kills itself at the third time it reaches the step
    assert worker.process.returncode == -9, f"the worker did not crash at {step}: {worker.log()[-2000:]}"

    second = observations(500, seed=2)
    produce(kafka.bootstrap, second)  # produced while the worker is down
    restarted = time.monotonic()
    worker.start()
    records = first + second
    wait_until(
        lambda: applied(worker, SERIES) >= len(records),
        timeout_s=90,
        what="catch-up after restart",
        explain=lambda: f"health {get_json(f'{worker.base}/health')[1]}\n{worker.log()[-4000:]}",
    )
    recovery_s = time.monotonic() - restarted

    # Every event applied exactly once.
    for series, (count, total) in expected_counts(records).items():
        status, body = get_json(f"{worker.base}/tally/{series}")
        assert status == 200 and body["count"] == count, (step, body)
        assert body["sum"] == pytest.approx(total, abs=1e-6)
    # Every output present at least once: the running count of each series has no gap.
    tallied = read_topic(kafka.bootstrap, topic_name("tallies"), expected=len(records) * 2, timeout_s=15)
    for series, (count, _) in expected_counts(records).items():
        seen = {t["count"] for t in tallied if t["series"] == series}
        assert seen == set(range(1, count + 1)), f"{step}: {series} misses outputs"
    # Every dead letter present at least once.
    letters = read_topic(kafka.bootstrap, topic_name("dead-letter"), expected=bad * 3, timeout_s=5)
    assert len({(d["partition"], d["offset"]) for d in letters}) == bad
    # No offset skipped: the applied offsets reach the end of every partition (lag 0 everywhere).
    wait_until(
        lambda: lag(worker) == [0] * PARTITIONS,
        timeout_s=15,
        what="zero lag on every partition",
    )
    print(json.dumps({"step": step, "recovery_s": round(recovery_s, 2)}))

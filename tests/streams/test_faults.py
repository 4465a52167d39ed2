"""Storage faults a worker must survive with exact state: a damaged newest checkpoint, a full disk.

The cheap scenarios of ``bench/faults.py``, small enough for CI; the broker outage and the restart
storm stay in the bench (they take minutes).
"""

from __future__ import annotations

import random

import pytest

from bench.common import committed
from bench.faults import damage_newest
from streams.producer import make_producer, send_all
from streams.schemas import Observation
from streams.topics import ensure_topics, topic_name
from tests.streams.helpers import try_get_json, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 4
SERIES = 8


def observations(n: int, seed: int, start: int = 0) -> list[Observation]:
    rng = random.Random(seed)
    return [
        Observation(series=f"s{rng.randrange(SERIES)}", ts=float(start + i), values=[rng.randint(-5, 5)])
        for i in range(n)
    ]


def produce(bootstrap: str, records: list[Observation]) -> None:
    producer = make_producer(bootstrap)
    try:
        send_all(producer, "observations", records, progress=False)
    finally:
        producer.close()


def exact(worker, records: list[Observation]) -> bool:
    """Every series' count and sum on the worker equal what was produced."""
    for i in range(SERIES):
        mine = [r.values[0] for r in records if r.series == f"s{i}"]
        status, body = try_get_json(f"{worker.base}/tally/s{i}")
        if status != 200 or body["count"] != len(mine) or body["sum"] != sum(mine):
            return False
    return True


def applied(worker) -> int:
    status, body = try_get_json(f"{worker.base}/tally")
    return body["events"] if status == 200 else -1


def done(bootstrap: str, group: str) -> int:
    """Events below ``group``'s committed offsets on the observations topic."""
    return committed(bootstrap, group, topic_name("observations"))


def health(worker) -> dict:
    return try_get_json(f"{worker.base}/health")[1]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(kafka, worker_factory, tmp_path):
    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    store = tmp_path / "store"
    env = {"DRIFTLINE_CHECKPOINT_STORE": str(store), "DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.2"}
    worker = worker_factory("tally", env=env).start()
    records: list[Observation] = []
    for round_ in range(3):  # three versions per shard: the newest is damaged, the one before loads
        chunk = observations(500, seed=round_, start=len(records))
        produce(kafka.bootstrap, chunk)
        records += chunk
        wait_until(lambda: applied(worker) == len(records), timeout_s=30, what="chunk applied")  # noqa: B023
        worker.stop()  # a clean stop writes the final checkpoint: a new version of every shard
        worker.start()
    worker.stop()
    damaged = damage_newest(store / "worker-tally")
    assert damaged, "no shard checkpoint to damage"

    later = observations(500, seed=9, start=len(records))
    produce(kafka.bootstrap, later)
    records += later
    worker.start()
    wait_until(lambda: exact(worker, records), timeout_s=30, what="exact tallies after the fall-back")
    assert worker.log().count("falling back to the previous version") >= len(damaged)


def test_a_full_checkpoint_disk_degrades_holds_offsets_and_recovers(kafka, worker_factory, tmp_path):
    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    switches = tmp_path / "faults"
    switches.mkdir()
    env = {"DRIFTLINE_FAULT_DIR": str(switches), "DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.2"}
    worker = worker_factory("tally", env=env).start()
    group = f"{worker.env['DRIFTLINE_APP_ID']}.tally"
    first, second = observations(1000, seed=1), observations(1000, seed=2, start=1000)
    produce(kafka.bootstrap, first)
    wait_until(
        lambda: done(kafka.bootstrap, group) == len(first),
        timeout_s=30,
        what="first commit",
    )

    (switches / "disk-full").touch()
    produce(kafka.bootstrap, second)
    wait_until(lambda: health(worker).get("status") == "degraded", timeout_s=15, what="degraded")
    assert any("No space left" in problem for problem in health(worker)["problems"])
    wait_until(lambda: applied(worker) == 2000, timeout_s=15, what="applied while the disk is full")
    assert done(kafka.bootstrap, group) == len(first)  # nothing committed past the checkpoint

    (switches / "disk-full").unlink()
    wait_until(lambda: health(worker).get("status") == "ok", timeout_s=15, what="ok again")
    wait_until(
        lambda: done(kafka.bootstrap, group) == 2000,
        timeout_s=15,
        what="committed again",
    )
    assert exact(worker, first + second)

"""Several processes on one machine, sharing only Kafka and the checkpoint store, as machines would.

Three keyed ``tally`` workers split the observations partitions; one is killed mid-stream and the
others take its partitions with their state; any worker answers for any key. A CTR trainer
publishes versions that two serving replicas pick up, and they keep serving while it is down; a
forecast replica answers from the forecasts topic with the forecast worker's bytes.
"""

from __future__ import annotations

import itertools
import random
import time
import urllib.error
import urllib.request

import pytest
from kafka import KafkaAdminClient

from streams.producer import make_producer, send_all
from streams.schemas import Observation
from streams.tally import expected_counts
from streams.topics import ensure_topics
from tests.streams.helpers import post_json, try_get_json, wait_until

pytestmark = pytest.mark.kafka

PARTITIONS = 12
SERIES = 30


def observations(n: int, seed: int) -> list[Observation]:
    rng = random.Random(seed)
    return [
        Observation(series=f"k{rng.randrange(SERIES)}", ts=float(i), values=[round(rng.uniform(-5, 5), 3)])
        for i in range(n)
    ]


def produce(bootstrap: str, records: list) -> None:
    producer = make_producer(bootstrap)
    try:
        send_all(
            producer,
            "observations" if isinstance(records[0], Observation) else "impressions",
            records,
            progress=False,
        )
    finally:
        producer.close()


def owned(worker) -> set[str]:
    status, body = try_get_json(f"{worker.base}/health")
    return set(body["services"]["tally"]["partitions"]) if status == 200 else set()


def split_evenly(workers) -> bool:
    sets = [owned(w) for w in workers]
    union = set().union(*sets)
    return len(union) == PARTITIONS and sum(len(s) for s in sets) == PARTITIONS and all(sets)


def answers(worker, series: str) -> tuple[int, float] | None:
    status, body = try_get_json(f"{worker.base}/tally/{series}")
    return (body["count"], round(body["sum"], 6)) if status == 200 else None


def test_three_workers_split_partitions_fail_over_and_answer_for_any_key(kafka, worker_factory, tmp_path):
    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    shared = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp_path / "store"), "DRIFTLINE_CHECKPOINT_INTERVAL_S": "1"}
    workers = [worker_factory("tally", name=f"w{i}", env=shared) for i in range(3)]
    for worker in workers:
        worker.start(wait=False)
    wait_until(lambda: split_evenly(workers), timeout_s=90, what="12 partitions split over 3 workers")
    group = f"{workers[0].env['DRIFTLINE_APP_ID']}.tally"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        description = admin.describe_groups([group])[group]
        assert len(description["members"]) == 3, description
    finally:
        admin.close()

    first = observations(6000, seed=1)
    produce(kafka.bootstrap, first)
    victim, survivors = workers[0], workers[1:]
    time.sleep(0.5)  # mid-stream: some of it applied, some not
    victim.kill()
    killed = time.monotonic()
    second = observations(3000, seed=2)
    produce(kafka.bootstrap, second)
    wait_until(lambda: split_evenly(survivors), timeout_s=60, what="survivors own every partition")
    takeover_s = time.monotonic() - killed
    assert takeover_s < 30, f"partitions moved after {takeover_s:.1f}s"

    want = expected_counts(first + second)
    wait_until(
        lambda: all(
            answers(survivors[0], s) is not None and answers(survivors[0], s)[0] == c
            for s, (c, _) in want.items()
        ),
        timeout_s=90,
        what="every key applied",
    )
    for worker in survivors:  # whoever owns the key, the other proxies (once it has seen the new owner)
        wait_until(
            lambda w=worker: all(answers(w, s) is not None for s in want), timeout_s=30, what="proxies"
        )
        for series, (count, total) in want.items():
            assert answers(worker, series) == (count, round(total, 6)), (worker.base, series)
    print(f"takeover after kill -9: {takeover_s:.1f}s")


def test_a_trainer_feeds_two_serving_replicas_that_outlive_it(kafka, worker_factory, tmp_path):
    from models.ctr.movielens import iter_impressions

    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    shared = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp_path / "store"), "DRIFTLINE_CHECKPOINT_INTERVAL_S": "1"}
    swap_s = 2.0
    options = ["ctr.batch_size=500", "ctr.batch_window_s=0.2", f"ctr.swap_interval_s={swap_s}"]
    trainer = worker_factory("ctr", options, name="trainer", env=shared).start()
    replicas = [worker_factory("ctr", name=f"replica{i}", env=shared, command="serve") for i in range(2)]
    for replica in replicas:
        replica.start(wait=False)
    impressions = list(itertools.islice(iter_impressions(), 4000))
    produce(kafka.bootstrap, impressions[:1000])

    def serving(base: str) -> int:
        status, body = try_get_json(f"{base}/ctr/versions")
        return body.get("serving", 0) if status == 200 else 0

    wait_until(lambda: all(serving(r.base) >= 1 for r in replicas), timeout_s=120, what="replicas up")
    before = serving(trainer.base)
    time.sleep(swap_s)  # so the next batch is due for a swap
    produce(kafka.bootstrap, impressions[1000:2000])
    wait_until(
        lambda: serving(trainer.base) > before, timeout_s=60, what="the trainer published a new version"
    )
    since = time.monotonic()  # polled every 0.25 s: the trainer swapped at most that long ago
    published = serving(trainer.base)
    wait_until(
        lambda: all(serving(r.base) >= published for r in replicas), timeout_s=60, what="replicas converge"
    )
    lag_s = time.monotonic() - since
    assert lag_s <= swap_s + 2, f"replicas took {lag_s:.1f}s to serve v{published}"

    candidates = [{"categorical": dict(r.categorical), "dense": dict(r.dense)} for r in impressions[:20]]
    trainer.kill()
    for replica in replicas:  # serving goes on without the trainer
        code, scored = post_json(f"{replica.base}/ctr/score", {"candidates": candidates})
        assert code == 200 and len(scored["scores"]) == 20 and scored["model_version"] >= published

    produce(kafka.bootstrap, impressions[2000:])
    trainer.start()

    def trained() -> int:
        status, body = try_get_json(f"{trainer.base}/ctr/versions")
        return body["trained_samples"] if status == 200 else -1

    wait_until(
        lambda: trained() >= len(impressions), timeout_s=120, what="all impressions trained after restart"
    )
    time.sleep(1.0)
    assert trained() == len(impressions)  # every labelled impression once: none lost, none twice
    print(f"replicas served v{published} {lag_s:.1f}s after the trainer")


def test_any_forecast_process_gives_the_same_answer_and_never_a_wrong_one(
    kafka, worker_factory, tmp_path, data_dir
):
    from tests.streams.test_services_e2e import ett_series

    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    shared = {"DRIFTLINE_CHECKPOINT_STORE": str(tmp_path / "store"), "DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.5"}
    options = ["forecast.kind=onenet", "forecast.seq_len=24", "forecast.horizon=4", "forecast.batch_size=64"]
    active, standby = (worker_factory("forecast", options, name=n, env=shared) for n in ("active", "standby"))
    active.start()
    standby.start()  # one owner per shared model: the second process stands by
    records = ett_series(data_dir, series=4, rows=40)
    produce(kafka.bootstrap, records)
    names = sorted({r.series for r in records})

    def bodies(worker) -> list:
        return [try_get_json(f"{worker.base}/forecast/{name}") for name in names]

    wait_until(lambda: all(code == 200 for code, _ in bodies(active)), timeout_s=120, what="forecasts")
    time.sleep(1.5)  # the last batch's checkpoint is durable
    served = bodies(active)
    # The standby proxies to the owner once the owner's status row reached it: the same body.
    wait_until(lambda: all(code == 200 for code, _ in bodies(standby)), timeout_s=30, what="standby proxies")
    assert bodies(standby) == served

    active.kill()
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # failover: 200 (the same forecast) or 503, never 404 or another body
        answers = bodies(standby)
        for (code, body), (_, before) in zip(answers, served, strict=True):
            seen.add(code)
            assert code in (200, 503), (code, body)
            if code == 200:
                assert body == before
        if all(code == 200 for code, _ in answers) and 503 in seen:
            break
        time.sleep(0.25)
    assert bodies(standby) == served, "the standby took over with another state"


def raw_get(url: str) -> tuple[int, bytes]:
    """Status and the exact body bytes of a GET (errors included), (0, b"") while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def test_a_forecast_replica_answers_the_workers_bytes_and_outlives_it(
    kafka, worker_factory, tmp_path, data_dir
):
    from tests.streams.test_services_e2e import ett_series

    ensure_topics(kafka.bootstrap, partitions=PARTITIONS)
    options = ["forecast.kind=onenet", "forecast.seq_len=24", "forecast.horizon=4", "forecast.batch_size=64"]
    worker = worker_factory("forecast", options, name="trainer").start()
    records = ett_series(data_dir, series=4, rows=40)
    produce(kafka.bootstrap, records)
    names = sorted({r.series for r in records})

    def bodies(process) -> list[tuple[int, bytes]]:
        return [raw_get(f"{process.base}/forecast/{name}?horizon=3") for name in names]

    wait_until(lambda: all(code == 200 for code, _ in bodies(worker)), timeout_s=120, what="forecasts")
    # started after the forecasts: /ready waits until it has read the forecasts topic to its end
    replica = worker_factory("forecast", options, name="replica", command="serve").start()
    served = bodies(worker)
    assert bodies(replica) == served  # the same bytes, caught up before it said ready
    assert raw_get(f"{replica.base}/forecast/nope")[0] == raw_get(f"{worker.base}/forecast/nope")[0] == 404
    assert raw_get(f"{replica.base}/forecast/{names[0]}?horizon=9")[0] == 400
    worker.kill()
    assert bodies(replica) == served  # queries never depended on the trainer


def test_topics_are_created_with_a_partition_count_that_never_changes(
    kafka, topic_prefix, monkeypatch, capsys
):
    from streams.cli import main

    monkeypatch.setenv("DRIFTLINE_BOOTSTRAP_SERVERS", kafka.bootstrap)
    assert main(["topics", "--partitions", "6"]) == 0
    assert "(created)" in capsys.readouterr().out
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        (observations,) = admin.describe_topics([f"{topic_prefix}observations"])
        assert len(observations["partitions"]) == 6
        retention = {
            name: _topic_config(admin, f"{topic_prefix}{name}", "retention.ms")
            for name in ("labels", "queries")
        }
        assert retention["labels"] == "-1"  # labels are the record of truth: never deleted by age
        assert retention["queries"] is None  # the broker's default retention
    finally:
        admin.close()
    assert main(["topics", "--partitions", "6"]) == 0  # idempotent
    assert main(["topics", "--partitions", "12"]) == 2
    error = capsys.readouterr().err
    assert "cannot use 12 partitions" in error and "observations has 6" in error


def _topic_config(admin: KafkaAdminClient, topic: str, key: str) -> str | None:
    """A setting the topic was created with (None: the broker's default applies)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    (by_name,) = answer.values()
    entry = by_name[topic].get(key)
    return None if entry is None else entry["value"]

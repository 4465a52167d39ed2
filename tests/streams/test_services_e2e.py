"""The forecast and CTR services through the real broker and a worker process, on real data.

(The rank service's end-to-end test, with annotators and a crash, is tests/rankers/test_rank_worker.py.)
"""

from __future__ import annotations

import itertools
import time

import pytest

from streams.producer import make_producer, observations_from_csv, send_all
from streams.schemas import Impression, Observation
from streams.topics import topic_name
from tests.streams.helpers import get_json, get_text, metric_value, post_json, read_topic, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def produce(kafka, topic: str, records) -> None:
    producer = make_producer(kafka.bootstrap)
    try:
        send_all(producer, topic, records, progress=False)
    finally:
        producer.close()


def ett_series(data_dir, series: int, rows: int) -> list[Observation]:
    """ETTh2 cut into contiguous segments, one series each, interleaved in time."""
    frame = list(
        itertools.islice(observations_from_csv(data_dir / "timeseries" / "ETTh2.csv", "x"), series * rows)
    )
    streams = [
        [Observation(series=f"ETTh2-{k}", ts=o.ts, values=o.values) for o in frame[k * rows : (k + 1) * rows]]
        for k in range(series)
    ]
    return [r for group in zip(*streams, strict=True) for r in group]


def test_forecasts_are_served_published_and_survive_a_restart(kafka, worker_factory, data_dir):
    options = ["forecast.kind=onenet", "forecast.seq_len=24", "forecast.horizon=4", "forecast.batch_size=64"]
    worker = worker_factory("forecast", options, env={"DRIFTLINE_CHECKPOINT_INTERVAL_S": "0.5"}).start()
    records = ett_series(data_dir, series=2, rows=60)
    wrong_width = Observation(series="ETTh2-0", ts=1e12, values=[1.0, 2.0])
    produce(kafka, "observations", [*records, wrong_width])

    url = f"{worker.base}/forecast/ETTh2-1?horizon=3"
    wait_until(lambda: get_json(url)[0] == 200, timeout_s=120, what="a forecast for ETTh2-1")
    wait_until(
        lambda: metric_value(get_text(f"{worker.base}/metrics"), "driftline_dead_letters_total") == 1,
        timeout_s=120, what="the 2-channel observation dead-lettered",
    )  # fmt: skip
    # The dead letter is on ETTh2-0's partition: ETTh2-1's may still be on its last batch.
    wait_until(
        lambda: get_json(url)[1]["ts"] == records[-1].ts, what="a forecast from the newest observation"
    )
    _, body = get_json(url)
    assert body["series"] == "ETTh2-1" and body["horizon"] == 3 and body["model"] == "onenet"
    assert len(body["values"]) == 3 and all(len(step) == 7 for step in body["values"])
    assert set(body["weights"]) and "model_version" in body
    letter = read_topic(kafka.bootstrap, topic_name("dead-letter"), 1)[0]
    assert "channels" in letter["reason"]
    published = read_topic(kafka.bootstrap, topic_name("forecasts"), 2)
    assert {f["series"] for f in published} <= {"ETTh2-0", "ETTh2-1"} and published[0]["horizon"] == 4

    code, error = get_json(f"{worker.base}/forecast/ETTh2-1?horizon=99")
    assert code == 400 and "horizon" in error["error"]
    assert get_json(f"{worker.base}/forecast/nope")[0] == 404
    metrics = get_text(f"{worker.base}/metrics")
    assert metric_value(metrics, "driftline_online_metric", service="forecast", metric="mse") is not None

    # A checkpoint holds every event (interval 0.5 s), so the restart restores this very table.
    wait_until(lambda: get_json(f"{worker.base}/health")[1]["status"] == "ok", what="healthy")
    time.sleep(1.5)
    worker.kill()
    worker.start()
    code, again = get_json(url)
    assert code == 200 and again["values"] == body["values"], "forecast table lost in the restart"


def test_ctr_trains_from_impressions_scores_and_rolls_back(kafka, worker_factory):
    from models.ctr.movielens import iter_impressions

    options = ["ctr.batch_size=500", "ctr.batch_window_s=0.2", "ctr.swap_interval_s=0"]
    worker = worker_factory("ctr", options).start()
    impressions = list(itertools.islice(iter_impressions(), 3000))
    unlabelled = Impression(id="u", ts=0, categorical=dict(impressions[0].categorical))
    produce(kafka, "impressions", [*impressions, unlabelled])

    applied = lambda: metric_value(get_text(f"{worker.base}/metrics"), "driftline_events_total") or 0  # noqa: E731
    wait_until(lambda: applied() == 3000, timeout_s=120, what="3000 impressions trained on")
    # the unlabelled impression may come in the batch after the last good one
    letters = "driftline_dead_letters_total"
    dead = lambda: metric_value(get_text(f"{worker.base}/metrics"), letters, service="ctr")  # noqa: E731
    wait_until(lambda: dead() is not None, timeout_s=30, what="the unlabelled impression dead-lettered")
    _, versions = get_json(f"{worker.base}/ctr/versions")
    assert versions["serving"] >= 2 and versions["trained_samples"] == 3000

    candidates = [{"categorical": dict(r.categorical), "dense": dict(r.dense)} for r in impressions[:10]]
    code, scored = post_json(f"{worker.base}/ctr/score", {"candidates": candidates})
    assert code == 200 and len(scored["scores"]) == 10 and all(0 < s < 1 for s in scored["scores"])
    assert scored["model_version"] == versions["serving"]
    code, error = post_json(f"{worker.base}/ctr/score", {"candidates": "all"})
    assert code == 400 and "candidates" in error["error"]

    metrics = get_text(f"{worker.base}/metrics")
    auc = metric_value(metrics, "driftline_online_metric", service="ctr", metric="auc")
    assert auc is not None and 0 <= auc <= 1
    assert metric_value(metrics, "driftline_dead_letters_total", service="ctr") == 1

    code, rolled = post_json(f"{worker.base}/ctr/rollback", {})
    assert code == 200 and rolled["model_version"] < rolled["rolled_back_from"]
    assert (
        post_json(f"{worker.base}/ctr/score", {"candidates": candidates})[1]["model_version"]
        == rolled["model_version"]
    )

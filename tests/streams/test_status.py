"""The live status: rows from a Prometheus registry, the per-service table, the board on Kafka."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Gauge
from rich.console import Console

from streams.schemas import ServiceStatus
from streams.status import StatusBoard, collect_rows, main_metric, render, status_key, watch
from tests.streams.helpers import wait_until
from tests.streams.test_follower import eventually


def _registry() -> CollectorRegistry:
    """A registry with the status metric families, as a worker exports them (synthetic values)."""
    r = CollectorRegistry()
    rate = Gauge("driftline_events_per_second", "rate", ["service"], registry=r)
    lag = Gauge("driftline_consumer_lag", "lag", ["service", "topic", "partition"], registry=r)
    last = Gauge("driftline_last_batch_timestamp_seconds", "last batch", ["service"], registry=r)
    metric = Gauge("driftline_online_metric", "metric", ["service", "metric"], registry=r)
    version = Gauge("driftline_model_version", "version", ["service"], registry=r)
    rate.labels("ctr").set(123.5)
    lag.labels("ctr", "impressions", "0").set(7)
    lag.labels("ctr", "impressions", "3").set(5)
    lag.labels("forecast", "observations", "1").set(2)
    last.labels("ctr").set(1_700_000_000.5)
    last.labels("forecast")  # created but never set: no batch yet
    metric.labels("ctr", "auc").set(0.71)
    metric.labels("ctr", "logloss").set(0.45)
    metric.labels("forecast", "mse").set(float("nan"))  # a diverged model must not break the row
    version.labels("ctr").set(4)
    return r


def _collect(**overrides: object) -> dict[str, ServiceStatus]:
    options: dict[str, object] = {
        "instance": "w1", "role": "worker", "url": "http://127.0.0.1:8080",
        "partitions": {"ctr": ["impressions:0", "impressions:3"], "rank": ["queries:2"]},
        "ready": {"ctr": True}, "status": "ok",
    }  # fmt: skip
    options.update(overrides)
    rows = collect_rows(_registry(), **options)  # type: ignore[arg-type]
    assert [row.service for row in rows] == sorted(row.service for row in rows)
    return {row.service: row for row in rows}


def test_collect_rows_reads_metric_families_by_name() -> None:
    before = time.time()
    rows = _collect()
    ctr = rows["ctr"]
    assert (ctr.instance, ctr.role, ctr.url, ctr.status) == ("w1", "worker", "http://127.0.0.1:8080", "ok")
    assert ctr.ready is True
    assert ctr.partitions == ["impressions:0", "impressions:3"]
    assert ctr.events_per_s == pytest.approx(123.5)
    assert ctr.lag == 12  # summed over the service's partitions
    assert ctr.last_batch_ts == pytest.approx(1_700_000_000.5)
    assert ctr.metric == pytest.approx({"auc": 0.71, "logloss": 0.45})
    assert ctr.model_version == 4
    assert before <= ctr.ts <= time.time()


def test_collect_rows_covers_services_without_samples_and_unset_gauges() -> None:
    rows = _collect()
    assert set(rows) == {"ctr", "forecast", "rank"}
    forecast, rank = rows["forecast"], rows["rank"]
    assert forecast.lag == 2 and forecast.last_batch_ts is None and forecast.metric == {}
    assert forecast.ready is False and forecast.partitions == []
    assert rank.partitions == ["queries:2"]
    assert (rank.events_per_s, rank.lag, rank.last_batch_ts, rank.model_version) == (0.0, 0, None, 0)
    # Every row survives the trip through the topic's JSON.
    for row in rows.values():
        assert ServiceStatus.model_validate_json(row.to_bytes()) == row


def test_collect_rows_passes_status_and_readiness_through() -> None:
    rows = _collect(status="draining", ready={"ctr": False, "rank": True})
    assert {s: (r.status, r.ready) for s, r in rows.items()} == {
        "ctr": ("draining", False), "forecast": ("draining", False), "rank": ("draining", True),
    }  # fmt: skip


def _row(instance: str, service: str, ts: float, **fields: object) -> ServiceStatus:
    return ServiceStatus(instance=instance, role="worker", service=service, ts=ts, **fields)  # type: ignore[arg-type]


def _plain(table: object) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _line(text: str, service: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [service])


def test_render_aggregates_the_instances_of_a_service() -> None:
    now = 1_000_000.0
    rows = [
        _row("w1", "ctr", now - 1, ready=True, events_per_s=100.0, lag=30, last_batch_ts=now - 9,
             metric={"logloss": 0.5, "auc": 0.70}, model_version=3),
        _row("w2", "ctr", now - 2, ready=False, events_per_s=50.5, lag=12, last_batch_ts=now - 4,
             metric={"auc": 0.80}, model_version=5),
        _row("w1", "forecast", now - 1, ready=True, metric={"mae": 0.3, "mse": 0.25}),
    ]  # fmt: skip
    text = _plain(render(rows, now=now))
    assert "service" in text and "online metric" in text
    # instances ready/total, summed rate and lag, newest batch, mean of the preferred metric, newest model
    assert _line(text, "ctr") == ["ctr", "1/2", "150.5", "42", "4s", "ago", "auc", "0.75", "v5", "ok"]
    assert _line(text, "forecast") == ["forecast", "1/1", "0.0", "0", "never", "mse", "0.25", "v0", "ok"]


def test_render_shows_mixed_statuses_and_the_empty_case() -> None:
    now = 50.0
    rows = [_row("a", "rank", now, status="ok"), _row("b", "rank", now, status="degraded")]
    assert _line(_plain(render(rows, now=now)), "rank")[-2:] == ["degraded,", "ok"]
    assert "no live status rows yet" in _plain(render([], now=now))


def test_main_metric_prefers_the_headline_metric() -> None:
    assert main_metric({"logloss": 1.0, "ndcg@10": 0.4}) == "ndcg@10"
    assert main_metric({"ndcg@10": 0.4, "loss": 1.0}) == "loss"
    assert main_metric({"hit_rate": 0.2, "coverage": 0.9}) == "hit_rate"
    assert main_metric({}) is None


def _produce(bootstrap: str, topic: str, rows: list[ServiceStatus | tuple[bytes, bytes | None]]) -> None:
    """Send status rows (or raw ``(key, value)`` records) in order and wait for the broker."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for row in rows:
            key, value = (status_key(row), row.to_bytes()) if isinstance(row, ServiceStatus) else row
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def _keys(rows: list[ServiceStatus]) -> list[tuple[str, str]]:
    return [(row.service, row.instance) for row in rows]


@pytest.mark.kafka
def test_status_board_keeps_the_newest_row_per_key_and_drops_stale_ones(kafka, topic_prefix: str) -> None:
    from streams.topics import ensure_topics, topic_name

    ensure_topics(kafka.bootstrap, partitions=1)
    topic = topic_name("status")
    assert topic.startswith(topic_prefix)
    now = time.time()
    _produce(kafka.bootstrap, topic, [
        _row("w1", "ctr", now - 3, events_per_s=1.0, model_version=1),
        _row("w2", "ctr", now - 2, events_per_s=2.0),
        _row("w1", "ctr", now - 1, events_per_s=10.0, model_version=2),  # newer row, same key
        _row("w1", "forecast", now - 1),
        _row("dead", "ctr", now - 60),  # its process stopped publishing a minute ago
        (b"w9/ctr", b"{not json"),  # skipped, counted, and the board keeps reading
        _row("gone", "rank", now - 1),
        (b"gone/rank", None),  # tombstone: that process left cleanly
    ])  # fmt: skip
    asyncio.run(_board_reads(kafka.bootstrap, topic, now))


async def _board_reads(bootstrap: str, topic: str, now: float) -> None:
    board = StatusBoard(bootstrap, stale_s=15.0)
    assert board.not_read_yet() == f"{topic} is still being read from its start"
    async with board.following():
        await asyncio.wait_for(board.follower.caught_up.wait(), 30)  # every row the topic held, read
        assert board.not_read_yet() is None
        rows = board.rows()
        assert _keys(rows) == [("ctr", "w1"), ("ctr", "w2"), ("forecast", "w1")]
        assert (rows[0].events_per_s, rows[0].model_version) == (10.0, 2)
        assert board.skipped == 1
        # Once w2 stops refreshing its row, it ages out too.
        assert _keys(board.rows(now=now + 13.5)) == [("ctr", "w1"), ("forecast", "w1")]

        # A new row arriving later is read without being asked.
        await asyncio.to_thread(_produce, bootstrap, topic, [_row("w3", "rank", time.time(), ready=True)])
        await eventually(lambda: ("rank", "w3") in _keys(board.rows()), 30, "the new row")


def _watch_until(bootstrap: str, console: Console, done: Callable[[str], bool]) -> str:
    """Run :func:`watch` in a thread until its output satisfies ``done``; return the output."""
    from streams.topics import ensure_topics, topic_name

    ensure_topics(bootstrap, partitions=1)
    _produce(bootstrap, topic_name("status"), [_row("w1", "ctr", time.time(), ready=True, lag=9)])
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(bootstrap, stop, 0.2, console), kwargs={"log_every_s": 0.5})
    thread.start()
    try:
        wait_until(lambda: done(console.file.getvalue()), 30, "the status view")  # type: ignore[attr-defined]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive(), "watch did not return after stop was set"
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.kafka
def test_watch_prints_plain_tables_when_not_on_a_terminal(kafka, topic_prefix: str) -> None:
    console = Console(file=io.StringIO())  # a log: not a terminal, default 80 columns
    assert not console.is_terminal
    text = _watch_until(kafka.bootstrap, console, lambda out: "ctr" in out and out.count("status at") >= 2)
    assert "\x1b[" not in text  # no escape codes in logs
    assert "online metric" in text  # the header is not wrapped to the 80 columns
    assert _line(text, "ctr")[:4] == ["ctr", "1/1", "0.0", "9"]


@pytest.mark.kafka
def test_watch_keeps_a_live_table_on_a_terminal(kafka, topic_prefix: str) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    text = _watch_until(kafka.bootstrap, console, lambda out: "ctr" in out)
    assert "driftline status" in text and "\x1b[" in text  # drawn with styles, redrawn in place
    assert "[driftline] status at" not in text

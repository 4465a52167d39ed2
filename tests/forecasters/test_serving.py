"""The forecast serving part of a replica: the worker's bytes from the forecasts topic, 404 and 503."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from forecasters.routes import forecast_body
from forecasters.service import ForecastService
from forecasters.serving import ForecastServing, build_serving
from streams.http import HasRoutes, make_app
from streams.schemas import Forecast, parse_record
from streams.topics import topic_name

from .test_service import OBSERVATIONS, SPEC, ask, error, observations

NO_STORE = Path("unused")  # a forecast replica keeps nothing on disk


def published(service: ForecastService, count: int, start: int = 0) -> list[Forecast]:
    """The forecasts ``service`` publishes for ``count`` rows of series a and b, as a replica reads them."""
    outputs = service.process(OBSERVATIONS, observations(["a", "b"], start, count)).outputs
    assert {o.topic for o in outputs} <= {topic_name("forecasts")}
    records = [parse_record(o.record.to_bytes(), Forecast) for o in outputs]
    assert all(isinstance(r, Forecast) for r in records)
    return records  # type: ignore[return-value]


def replica_of(records: list[Forecast]) -> ForecastServing:
    serving = build_serving(NO_STORE, horizon=SPEC.horizon)
    for record in records:
        serving.apply(record)
    serving.caught_up()
    return serving


def get(replica: ForecastServing, series: str, **query: str) -> dict[str, Any]:
    """A replica's answer body: bytes encoded once per record (see ForecastRoutes.encode_once)."""
    answer = ask(replica, series, **query)
    assert answer.status == 200 and isinstance(answer.body, bytes)
    body: dict[str, Any] = json.loads(answer.body)
    return body


async def raw_answers(process: HasRoutes, paths: list[str]) -> list[tuple[int, bytes]]:
    """Status and body bytes of ``paths`` served over HTTP by ``process``'s routes."""
    async with TestClient(TestServer(make_app([process]))) as client:
        answers = []
        for path in paths:
            response = await client.get(path)
            answers.append((response.status, await response.read()))
        return answers


def test_a_replica_answers_the_workers_bytes_for_the_same_forecast() -> None:
    worker = ForecastService(SPEC)
    records = published(worker, 12)
    replica = replica_of(records)
    paths = [f"/forecast/{s}{q}" for s in ("a", "b") for q in ("", "?horizon=1", "?horizon=3")]
    from_worker = asyncio.run(raw_answers(worker, paths))
    assert all(status == 200 for status, _ in from_worker)
    assert asyncio.run(raw_answers(replica, paths)) == from_worker
    # the next batch's forecasts replace the replica's entries: still the worker's bytes
    for record in published(worker, 3, start=12):
        replica.apply(record)
    assert asyncio.run(raw_answers(replica, paths)) == asyncio.run(raw_answers(worker, paths))


def test_a_replica_encodes_each_forecast_once_per_horizon_until_it_is_replaced() -> None:
    worker = ForecastService(SPEC)
    replica = replica_of(published(worker, 12))
    first = ask(replica, "a").body
    assert ask(replica, "a").body is first  # the same bytes, not encoded again
    assert ask(replica, "a", horizon="1").body != first
    (newer,) = (r for r in published(worker, 1, start=12) if r.series == "a")
    replica.apply(newer)
    assert json.loads(ask(replica, "a").body) == forecast_body(newer, SPEC.horizon) != json.loads(first)


def test_a_replica_answers_404_for_an_unknown_series_and_400_for_a_bad_horizon() -> None:
    replica = replica_of(published(ForecastService(SPEC), 12))
    missing = error(replica, "nope")
    assert missing.status == 404 and "unknown series 'nope'" in missing.message
    for bad in ("0", "4", "two"):
        failure = error(replica, "a", horizon=bad)
        assert failure.status == 400 and "horizon must be" in failure.message
    assert len(get(replica, "a", horizon="2")["values"]) == 2


def test_a_replica_answers_503_until_it_has_read_the_topic_to_its_end() -> None:
    records = published(ForecastService(SPEC), 12)
    replica = build_serving(NO_STORE, horizon=SPEC.horizon)
    replica.apply(records[0])
    assert not replica.ready()
    waiting = error(replica, "a")
    assert waiting.status == 503 and "catching up" in waiting.message
    replica.caught_up()
    assert replica.ready() and get(replica, "a")["series"] == "a"


def test_a_forecast_of_another_horizon_is_refused_with_the_reason() -> None:
    record = published(ForecastService(SPEC), 12)[0]
    replica = ForecastServing(horizon=4)
    with pytest.raises(ValueError, match=r"covers 3 steps .* this replica serves horizon 4"):
        replica.apply(record)
    assert replica.table == {}
    with pytest.raises(ValueError, match="unknown forecaster options"):
        build_serving(NO_STORE, horizonn=3)

"""The serving role without Kafka: records go to the parts that follow their topic, catch-up is told once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from roles.serving import ServingRole
from streams.config import Settings
from streams.schemas import Forecast, ModelUpdate, Record
from streams.service import Route
from streams.topics import topic_name


@dataclass
class Part:
    """A serving part that records what the role hands it."""

    name: str
    follows: str
    record_type: type[Record]
    applied: list[Record] = field(default_factory=list)
    told: int = 0

    def routes(self) -> list[Route]:
        return []

    def ready(self) -> bool:
        return self.told > 0

    def model_version(self) -> int:
        return len(self.applied)

    def apply(self, record: Record) -> None:
        if getattr(record, "series", None) == "poison":
            raise ValueError("cannot serve this one")
        self.applied.append(record)

    def caught_up(self) -> None:
        self.told += 1


@dataclass
class Fetched:
    value: bytes | None


class Positions:
    """Stands in for the consumer's ``position``."""

    def __init__(self, at: dict[TopicPartition, int]) -> None:
        self.at = at

    async def position(self, tp: TopicPartition) -> int:
        return self.at[tp]


FORECASTS, UPDATES = topic_name("forecasts"), topic_name("model-updates")


def forecast(series: str) -> bytes:
    return Forecast(series=series, ts=0.0, horizon=1, values=[[1.0]], model="m", model_version=1).to_bytes()


def update() -> bytes:
    return ModelUpdate(service="ctr", version=1, ts=0.0, sha256="0" * 64, weights="").to_bytes()


def role() -> tuple[ServingRole, Part, Part]:
    ctr, fc = Part("ctr", "model-updates", ModelUpdate), Part("forecast", "forecasts", Forecast)
    return ServingRole(Settings(bootstrap_servers="127.0.0.1:1"), [ctr, fc]), ctr, fc


def test_each_record_goes_to_the_parts_that_follow_its_topic() -> None:
    serving, ctr, fc = role()
    serving._apply({
        TopicPartition(FORECASTS, 3): [Fetched(forecast("a")), Fetched(None), Fetched(b"not json")],
        TopicPartition(UPDATES, 0): [Fetched(update()), Fetched(forecast("wrong topic"))],
    })  # fmt: skip
    assert [r.series for r in fc.applied] == ["a"]  # type: ignore[attr-defined]
    assert [type(r) for r in ctr.applied] == [ModelUpdate]  # a forecast on model-updates is skipped
    assert serving.records_applied == 2 and serving.health()["status"] == "ok"


def test_a_record_a_part_refuses_degrades_health_until_one_is_served() -> None:
    serving, _, fc = role()
    serving._apply({TopicPartition(FORECASTS, 0): [Fetched(forecast("poison"))]})
    health = serving.health()
    assert health["status"] == "degraded" and "cannot serve this one" in health["problems"][0]
    assert set(health) >= {"instance", "role", "uptime_s", "updates_applied", "services"}
    assert health["services"]["forecast"] == {"model_version": 0, "ready": False, "partitions": []}
    serving._apply({TopicPartition(FORECASTS, 0): [Fetched(forecast("b"))]})
    assert serving.health()["status"] == "ok" and len(fc.applied) == 1


def test_parts_are_told_once_when_every_partition_of_their_topic_reached_its_start_time_end() -> None:
    serving, ctr, fc = role()
    ends = {TopicPartition(FORECASTS, 0): 5, TopicPartition(FORECASTS, 1): 0, TopicPartition(UPDATES, 0): 2}
    behind = dict(ends)
    consumer = Positions({TopicPartition(FORECASTS, 0): 3, TopicPartition(FORECASTS, 1): 0,
                          TopicPartition(UPDATES, 0): 2})  # fmt: skip
    waiting = asyncio.run(serving._still_behind(consumer, behind, {FORECASTS, UPDATES}))  # type: ignore[arg-type]
    assert waiting == {FORECASTS} and (ctr.told, fc.told) == (1, 0)
    assert serving.ready() == (False, "catching up with the topics of forecast")
    consumer.at[TopicPartition(FORECASTS, 0)] = 5
    waiting = asyncio.run(serving._still_behind(consumer, behind, waiting))  # type: ignore[arg-type]
    assert waiting == set() and (ctr.told, fc.told) == (1, 1) and serving.ready()[0]

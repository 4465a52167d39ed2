"""The serving role without Kafka: records go to the parts that follow their topic, catch-up is told
once, and lineage requests go to the worker that trains the service."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, web

from roles.serving import ServingRole, WorkersLineage
from streams.auth import HttpSecurity
from streams.config import Settings
from streams.directory import OwnerDirectory
from streams.http import make_app
from streams.schemas import Forecast, ModelUpdate, Record, ServiceStatus
from streams.service import Route
from streams.topics import topic_name
from tests.streams.test_directory import Board
from tests.streams.test_front import serving


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
    topic: str
    value: bytes | None


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
    serving._apply([
        Fetched(FORECASTS, forecast("a")), Fetched(FORECASTS, None), Fetched(FORECASTS, b"not json"),
        Fetched(UPDATES, update()), Fetched(UPDATES, forecast("wrong topic")),
    ])  # type: ignore[list-item]  # fmt: skip
    assert [r.series for r in fc.applied] == ["a"]  # type: ignore[attr-defined]
    assert [type(r) for r in ctr.applied] == [ModelUpdate]  # a forecast on model-updates is skipped
    assert serving.records_applied == 2 and serving.health()["status"] == "ok"


def test_a_record_a_part_refuses_degrades_health_until_one_is_served() -> None:
    serving, _, fc = role()
    serving._apply([Fetched(FORECASTS, forecast("poison"))])  # type: ignore[list-item]
    health = serving.health()
    assert health["status"] == "degraded" and "cannot serve this one" in health["problems"][0]
    assert set(health) >= {"instance", "role", "uptime_s", "updates_applied", "services"}
    assert health["services"]["forecast"] == {"model_version": 0, "ready": False, "partitions": []}
    serving._apply([Fetched(FORECASTS, forecast("b"))])  # type: ignore[list-item]
    assert serving.health()["status"] == "ok" and len(fc.applied) == 1


def test_parts_are_told_once_their_topic_is_caught_up_and_follow_one_follower() -> None:
    serving, ctr, fc = role()
    assert serving.follower.topics == sorted([FORECASTS, UPDATES])
    serving.follower.on_caught_up(UPDATES)  # type: ignore[misc]  # what the follower calls, once per topic
    assert (ctr.told, fc.told) == (1, 0)
    assert serving.ready() == (False, "catching up with the topics of forecast")
    serving.follower.on_caught_up(FORECASTS)  # type: ignore[misc]
    assert (ctr.told, fc.told) == (1, 1) and serving.ready()[0]


def test_a_topic_that_cannot_be_read_degrades_health() -> None:
    serving, _, _ = role()
    serving.follower.problem = "reading driftline.forecasts failed: KafkaConnectionError"
    assert serving.health()["problems"] == ["reading driftline.forecasts failed: KafkaConnectionError"]


# -- GET /models on a replica: answered by the worker that trains the service ---------------------
def trainer(seen: list[tuple[str, str, str | None, bytes]]) -> web.Application:
    """A ctr worker's lineage routes that record what reached them."""

    async def lineage(request: web.Request) -> web.Response:
        seen.append(
            (request.method, request.path, request.headers.get("Authorization"), await request.read())
        )
        if request.method == "POST":
            return web.json_response({"service": "ctr", "action": "rolled_back"})
        return web.json_response({"ctr": {"serving": 3, "versions": [{"version": 3}]}})

    app = web.Application()
    app.router.add_route("*", "/models{rest:.*}", lineage)
    return app


async def _replica_lineage() -> dict[str, Any]:
    seen: list[tuple[str, str, str | None, bytes]] = []
    board = Board([])
    app = make_app([], security=HttpSecurity())
    WorkersLineage(OwnerDirectory(board), ["ctr"]).attach(app)  # type: ignore[arg-type]
    token = {"Authorization": "Bearer t0k3n"}
    out: dict[str, Any] = {"seen": seen}
    async with serving(trainer(seen)) as worker, serving(app) as replica, ClientSession() as client:
        async with client.get(f"{replica}/models") as answer:
            out["unknown"] = (answer.status, answer.headers.get("Retry-After"), await answer.json())
        now = time.time()
        board.live = [
            ServiceStatus(instance="t", role="worker", service="ctr", url=worker, ts=now - 1, ready=True,
                          partitions=["impressions:0"]),
            ServiceStatus(instance="s", role="worker", service="ctr", url="http://127.0.0.1:1", ts=now,
                          ready=True),  # a stand-by: no partitions, no lineage of its own
            ServiceStatus(instance="r", role="serving", service="ctr", url=replica, ts=now, ready=True),
        ]  # fmt: skip
        async with client.get(f"{replica}/models", headers=token) as answer:
            out["models"] = (answer.status, await answer.json())
        async with client.post(
            f"{replica}/models/ctr/rollback", json={"version": 2}, headers=token
        ) as answer:
            out["rollback"] = (answer.status, await answer.json())
        async with client.post(f"{replica}/models/rank/rollback", headers=token) as answer:
            out["no rank"] = (answer.status, answer.headers.get("Retry-After"), await answer.json())
    return out


def test_a_replica_answers_models_from_the_worker_that_trains_its_service() -> None:
    out = asyncio.run(_replica_lineage())
    status, retry_after, body = out["unknown"]
    assert (status, retry_after) == (503, "1") and "no worker running ctr is known yet" in body["error"]
    assert out["models"] == (200, {"ctr": {"serving": 3, "versions": [{"version": 3}]}})
    assert out["rollback"] == (200, {"service": "ctr", "action": "rolled_back"})
    assert out["seen"] == [
        ("GET", "/models", "Bearer t0k3n", b""),  # the trainer, not the stand-by nor the replica itself
        ("POST", "/models/ctr/rollback", "Bearer t0k3n", b'{"version": 2}'),
    ]
    status, retry_after, body = out["no rank"]
    assert (status, retry_after) == (503, "1") and "no worker running rank" in body["error"]

"""The main job's one HTTP port in front of its per-service workers, against stand-in workers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from prometheus_client.parser import text_string_to_metric_families

from roles.front import ROUTE_PREFIXES, Front, worker_for
from streams import registry
from streams.broker import free_port
from streams.metrics import WorkerMetrics


def stand_in(service: str, health: dict[str, Any], ready: bool, lag: int) -> web.Application:
    """A worker of ``service``: echoes what reached it, answers probes as told, exports its lag."""
    metrics = WorkerMetrics()
    metrics.lag.labels(service, f"{service}-topic", "0").set(lag)

    async def echo(request: web.Request) -> web.Response:
        seen = {
            "service": service,
            "method": request.method,
            "path_qs": request.path_qs,
            "body": (await request.read()).decode(),
            "authorization": request.headers.get("Authorization"),
        }
        policy = {"Content-Security-Policy": "default-src 'self'"}
        answer = web.json_response(seen, status=201, headers=policy)
        answer.enable_compression()  # as the client accepts: the body passes the front as bytes
        return answer

    async def probe_health(_: web.Request) -> web.Response:
        return web.json_response(health)

    async def probe_ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def probe_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/health", probe_health)
    app.router.add_get("/ready", probe_ready)
    app.router.add_get("/metrics", probe_metrics)
    app.router.add_route("*", "/{path:.*}", echo)
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def front_of(workers: dict[str, str]) -> AsyncIterator[str]:
    port = free_port()
    front = Front("127.0.0.1", port, workers)
    await asyncio.to_thread(front.start)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(front.stop)


def healthy(service: str) -> dict[str, Any]:
    return {"status": "ok", "problems": [], "services": {service: {"partitions": [f"{service}:0"]}}}


async def _routes_and_probes() -> dict[str, Any]:
    degraded = {"status": "degraded", "problems": ["ctr: cannot reach Kafka"], "services": {"ctr": {}}}
    async with (
        serving(stand_in("forecast", healthy("forecast"), True, 3)) as forecast,
        serving(stand_in("ctr", degraded, False, 250)) as ctr,
        front_of({"forecast": forecast, "ctr": ctr}) as base,
        ClientSession() as client,
    ):
        out: dict[str, Any] = {}
        async with client.get(f"{base}/forecast/ETTh2?horizon=6") as answer:
            out["forecast"] = (answer.status, await answer.json(), answer.headers)
        token = {"Authorization": "Bearer t0k3n"}
        async with client.post(f"{base}/ctr/score", data=b'{"x": 1}', headers=token) as answer:
            out["ctr"] = (answer.status, await answer.json())
        async with client.get(f"{base}/auth/whoami") as answer:
            out["other"] = (answer.status, await answer.json())
        async with client.get(f"{base}/health") as answer:
            out["health"] = (answer.status, await answer.json())
        async with client.get(f"{base}/ready") as answer:
            out["ready"] = (answer.status, await answer.json(), answer.headers)
        async with client.get(f"{base}/metrics") as answer:
            out["metrics"] = await answer.text()
        return out


def test_the_one_port_forwards_each_route_to_its_service_and_combines_the_probes() -> None:
    out = asyncio.run(_routes_and_probes())
    status, body, headers = out["forecast"]
    assert status == 201 and body["service"] == "forecast" and body["path_qs"] == "/forecast/ETTh2?horizon=6"
    assert headers["Content-Security-Policy"] == "default-src 'self'"  # the worker's headers come back
    assert headers["Content-Encoding"] in ("gzip", "deflate")  # compressed bytes, decoded by the client
    status, body = out["ctr"]
    assert (status, body["service"], body["method"], body["body"]) == (201, "ctr", "POST", '{"x": 1}')
    assert body["authorization"] == "Bearer t0k3n"  # the worker checks the token itself
    assert out["other"][1]["service"] == "forecast"  # no service's route: the first worker answers
    status, health = out["health"]
    assert status == 200 and health["status"] == "degraded"
    assert health["problems"] == ["ctr: cannot reach Kafka"]
    assert set(health["services"]) == {"forecast", "ctr"}
    status, ready, headers = out["ready"]
    assert status == 503 and "ctr" in ready["error"] and "forecast" not in ready["error"]
    assert headers["Retry-After"]
    families = {f.name: f for f in text_string_to_metric_families(out["metrics"])}
    lags = {s.labels["service"]: s.value for s in families["driftline_consumer_lag"].samples}
    assert lags == {"forecast": 3.0, "ctr": 250.0}
    assert out["metrics"].count("# TYPE driftline_consumer_lag gauge") == 1


async def _worker_gone() -> dict[str, Any]:
    async with serving(stand_in("tally", healthy("tally"), True, 0)) as tally:
        pass  # stopped: nothing listens there any more
    async with front_of({"tally": tally}) as base, ClientSession() as client:
        async with client.get(f"{base}/tally/s") as answer:
            forwarded = (answer.status, await answer.json(), answer.headers.get("Retry-After"))
        async with client.get(f"{base}/health") as answer:
            health = await answer.json()
        return {"forwarded": forwarded, "health": health}


def test_a_worker_that_does_not_answer_gives_503_and_a_degraded_health() -> None:
    out = asyncio.run(_worker_gone())
    status, body, retry_after = out["forwarded"]
    assert status == 503 and "did not answer" in body["error"] and retry_after
    assert out["health"]["status"] == "degraded" and "tally worker" in out["health"]["problems"][0]


def test_a_busy_port_is_refused_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            Front("127.0.0.1", taken.getsockname()[1], {"tally": "http://127.0.0.1:1"}).start()


def test_every_route_of_every_service_is_forwarded_to_that_service(tmp_path: Path) -> None:
    workers = {name: f"http://{name}" for name in registry.SERVICES}
    assert set(ROUTE_PREFIXES) == set(registry.SERVICES)
    for name in registry.SERVICES:
        options = {"kind": "dlinear"} if name == "forecast" else {}
        service = registry.build(name, tmp_path / name, **options)
        for route in service.routes():
            assert worker_for(route.path, workers) == workers[name], (name, route.path)


def test_the_front_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        Front("127.0.0.1", free_port(), {})

"""The HTTP adapter on a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import datetime
import json
import math

import numpy as np
from aiohttp import ClientSession, web

from streams.auth import HttpSecurity
from streams.http import json_bytes, make_app
from streams.service import ApiError, ApiRequest, ApiResponse, NotOwner, Route
from streams.tally import TallyService
from streams.tokens import Role, TokenStore, new_token

ADMIN_TOKEN, ADMIN = new_token("root", Role.ADMIN)
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def security() -> HttpSecurity:
    """Tokens held in memory only: an admin, for the write route."""
    return HttpSecurity(store=TokenStore([ADMIN]))


class Echo(TallyService):
    name = "echo"

    def routes(self) -> list[Route]:
        async def echo(request: ApiRequest) -> ApiResponse:
            if request.body is None:
                raise ApiError(400, "body required")
            return ApiResponse({"params": request.path_params, "query": request.query, "body": request.body})

        async def broken(request: ApiRequest) -> ApiResponse:
            raise ZeroDivisionError("oops")

        async def page(request: ApiRequest) -> ApiResponse:
            return ApiResponse("<h1>hi</h1>", content_type="text/html")

        return [
            Route("POST", "/echo/{name}", echo),
            Route("GET", "/broken", broken),
            Route("GET", "/page", page),
        ]


async def _exercise() -> dict:
    app = make_app(
        [Echo()],
        metrics_text=lambda: b"m 1\n",
        health=lambda: {"status": "degraded"},
        ready=lambda: (False, "restoring partitions of echo"),
        security=security(),
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    out: dict = {}
    try:
        async with ClientSession() as http:
            async with http.post(f"{base}/echo/x?a=1", json={"k": 2}, headers=AS_ADMIN) as r:
                out["echo"] = (r.status, await r.json())
            async with http.post(f"{base}/echo/x", data=b"{bad", headers=AS_ADMIN) as r:
                out["bad_json"] = (r.status, await r.json())
            async with http.post(f"{base}/echo/x", headers=AS_ADMIN) as r:
                out["no_body"] = (r.status, await r.json())
            async with http.get(f"{base}/broken") as r:
                out["broken"] = (r.status, await r.json())
            async with http.get(f"{base}/page") as r:
                out["page"] = (r.status, r.content_type, await r.text())
            async with http.get(f"{base}/health") as r:
                out["health"] = (r.status, await r.json())
            async with http.get(f"{base}/ready") as r:
                out["ready"] = (r.status, r.headers.get("Retry-After"), await r.json())
            async with http.get(f"{base}/metrics") as r:
                out["metrics"] = (r.status, await r.text())
    finally:
        await runner.cleanup()
    return out


def test_routes_errors_health_and_metrics():
    out = asyncio.run(_exercise())
    assert out["echo"] == (200, {"params": {"name": "x"}, "query": {"a": "1"}, "body": {"k": 2}})
    assert out["bad_json"][0] == 400 and "not valid JSON" in out["bad_json"][1]["error"]
    assert out["no_body"] == (400, {"error": "body required"})
    assert out["broken"][0] == 500 and "ZeroDivisionError" in out["broken"][1]["error"]
    assert out["page"] == (200, "text/html", "<h1>hi</h1>")
    assert out["health"] == (200, {"status": "degraded"})  # liveness: the process answers
    assert out["ready"] == (503, "1", {"error": "restoring partitions of echo"})
    assert out["metrics"] == (200, "m 1\n")


class Keyed(TallyService):
    """Answers for partition 0 itself; any other key lives elsewhere."""

    name = "keyed"

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def routes(self) -> list[Route]:
        async def one(request: ApiRequest) -> ApiResponse:
            partition = int(request.path_params["p"])
            if partition != 0 and self.label == "front":
                raise NotOwner(self.name, partition)
            return ApiResponse({"answered_by": self.label, "partition": partition})

        return [Route("GET", "/keyed/{p}", one)]


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def _ownership() -> dict:
    owner_runner, owner = await _start(make_app([Keyed("owner")], security=security()))
    owners = {1: owner}
    front_app = make_app([Keyed("front")], owner_url=lambda s, p: owners.get(p), security=security())
    front_runner, front = await _start(front_app)
    out: dict = {}
    try:
        async with ClientSession() as http:
            for p in (0, 1, 2):
                async with http.get(f"{front}/keyed/{p}") as r:
                    out[p] = (r.status, r.headers.get("Retry-After"), await r.json())
            owners[3] = front  # a stale directory pointing back at a non-owner: no loop, a 503
            async with http.get(f"{front}/keyed/3") as r:
                out[3] = (r.status, r.headers.get("Retry-After"), await r.json())
    finally:
        await front_runner.cleanup()
        await owner_runner.cleanup()
    return out


def test_keys_owned_elsewhere_are_proxied_once_or_answered_503():
    out = asyncio.run(_ownership())
    assert out[0] == (200, None, {"answered_by": "front", "partition": 0})
    assert out[1] == (200, None, {"answered_by": "owner", "partition": 1})
    assert out[2][:2] == (503, "1") and "no owner is known" in out[2][2]["error"]
    assert out[3][:2] == (503, "1") and "no owner is known" in out[3][2]["error"]


def test_answers_are_json_even_for_numpy_numbers_nan_and_odd_keys() -> None:
    when = datetime.datetime(2026, 11, 26, 12, 0)
    body = {"score": np.float64(0.25), "count": np.int64(3), "row": np.arange(3), "gap": math.nan, 7: when}
    assert json.loads(json_bytes(body)) == {
        "score": 0.25,
        "count": 3,
        "row": [0, 1, 2],
        "gap": None,
        "7": str(when),
    }

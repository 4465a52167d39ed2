"""The dashboard's routes without a browser: the page and its assets come from this server under a
strict CSP, ``/status`` folds the status rows per service behind the reader check, and an
unreachable status topic is a clear 503, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from streams import dashboard
from streams.auth import HttpSecurity
from streams.http import make_app
from streams.schemas import ServiceStatus
from streams.status import StatusBoard
from streams.tokens import Role, TokenStore, new_token

READER_TOKEN, READER = new_token("viewer", Role.READER)


@contextlib.contextmanager
def serving(app: web.Application) -> Iterator[str]:
    """``app`` on a free loopback port from a thread of its own; yields its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def fetch(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class FakeBoard:
    """Two instances of ctr and one of forecast, as a StatusBoard would hold them (synthetic)."""

    def __init__(self) -> None:
        now = time.time()
        self.live = [
            ServiceStatus(instance="a", role="worker", service="ctr", ts=now, ready=True, events_per_s=150.0,
                          lag=3, metric={"auc": 0.7, "logloss": 0.6}, model_version=4, last_batch_ts=now - 1),
            ServiceStatus(instance="b", role="worker", service="ctr", ts=now, ready=False, events_per_s=50.0,
                          lag=2, metric={"auc": 0.8}, model_version=5),
            ServiceStatus(instance="a", role="worker", service="forecast", ts=now, ready=True),
        ]  # fmt: skip
        self.waiting: str | None = None

    def not_read_yet(self) -> str | None:
        return self.waiting

    def rows(self) -> list[ServiceStatus]:
        return self.live


def followed(app: web.Application, board: StatusBoard) -> None:
    """Follow the status topic into ``board`` while ``app`` runs, as a role does while it serves."""

    async def follow(_: web.Application):  # type: ignore[no-untyped-def]
        async with board.following():
            yield

    app.cleanup_ctx.append(follow)


def _app(board: Any) -> web.Application:
    security = HttpSecurity(store=TokenStore([READER]), queries_open=False)
    app = make_app([], security=security)
    dashboard.attach(app, board)
    return app


def test_the_page_and_its_assets_come_from_this_server_under_a_strict_csp() -> None:
    with serving(_app(FakeBoard())) as base:
        code, headers, page = fetch(f"{base}/dashboard")  # a page needs no token
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        scripts = re.findall(rb"<script([^>]*)>", page)
        assert scripts and all(b'src="/' in s for s in scripts), "every script is a file of this server"
        assert not re.search(rb'(src|href)="(https?:)?//', page), "nothing is loaded from elsewhere"
        assets = {"/dashboard.js": "text/javascript", "/vendor/uPlot.iife.min.js": "text/javascript",
                  "/vendor/uPlot.min.css": "text/css", "/driftline-auth.js": "text/javascript"}  # fmt: skip
        for path, kind in assets.items():
            code, headers, body = fetch(base + path)
            assert (code, headers["Content-Type"].split(";")[0]) == (200, kind) and body, path
        assert b"uPlot" in fetch(f"{base}/vendor/uPlot.iife.min.js")[2]


def test_status_folds_each_service_and_needs_a_reader_when_queries_do() -> None:
    board = FakeBoard()
    board.waiting = "driftline.status is still being read from its start"
    with serving(_app(board)) as base:
        assert fetch(f"{base}/status")[0] == 401
        code, headers, body = fetch(f"{base}/status", READER_TOKEN)
        assert (code, headers.get("Retry-After")) == (503, "1")  # half-read rows are never shown
        assert b"the status topic is not read yet: driftline.status is still being read" in body
        board.waiting = None
        code, _, body = fetch(f"{base}/status", READER_TOKEN)
    assert code == 200
    answer = json.loads(body)
    assert answer["ts"] > 0
    ctr, forecast = answer["services"]
    assert (ctr["service"], ctr["instances"], ctr["ready"], ctr["events_per_s"], ctr["lag"]) == (
        "ctr",
        2,
        1,
        200.0,
        5,
    )
    assert ctr["metric"] == {"name": "auc", "value": pytest.approx(0.75)} and ctr["model_version"] == 5
    assert (
        forecast["service"] == "forecast" and forecast["metric"] is None and forecast["last_batch_ts"] is None
    )


def test_an_unreachable_status_topic_is_a_clear_503() -> None:
    board = StatusBoard("127.0.0.1:1", security={})
    app = _app(board)
    followed(app, board)
    with serving(app) as base:
        deadline = time.monotonic() + 30
        code, headers, body = fetch(f"{base}/status", READER_TOKEN)
        while b"KafkaConnectionError" not in body and time.monotonic() < deadline:
            time.sleep(0.1)  # the first answer may come before the first attempt to connect failed
            code, headers, body = fetch(f"{base}/status", READER_TOKEN)
    assert code == 503 and "Retry-After" in headers
    assert b"the status topic is not read yet: reading " in body and b"failed: KafkaConnectionError" in body


# -- what the dashboard reads through the main job's one port --------------------------------------
SEEN = web.AppKey("seen", list)


def lineage_worker(service: str, lineage: bool) -> web.Application:
    """A worker of ``service`` with drift in its ``/health`` and, if ``lineage``, a ``/models``."""
    seen: list[tuple[str, str | None]] = []

    async def health(_: web.Request) -> web.Response:
        drift = {service: {"alarms": 1, "in_alarm": False, "last_alarm_ts": 5.0}}
        return web.json_response({"status": "ok", "problems": [], "services": {service: {}}, "drift": drift})

    async def models(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization")))
        if not lineage:
            return web.json_response({"error": "Not Found"}, status=404)
        return web.json_response({service: {"serving": 1, "versions": [{"version": 1}]}})

    app = web.Application()
    app[SEEN] = seen
    app.router.add_get("/health", health)
    app.router.add_route("*", "/models{rest:.*}", models)
    return app


async def _through_the_front(lineage: tuple[bool, bool]) -> dict[str, Any]:
    from aiohttp import ClientSession

    from tests.streams.test_front import front_of
    from tests.streams.test_front import serving as serving_async

    ctr_app, rank_app = lineage_worker("ctr", lineage[0]), lineage_worker("rank", lineage[1])
    auth = {"Authorization": f"Bearer {READER_TOKEN}"}
    async with (
        serving_async(ctr_app) as ctr,
        serving_async(rank_app) as rank,
        front_of({"ctr": ctr, "rank": rank}) as base,
        ClientSession() as client,
    ):
        async with client.get(f"{base}/health") as answer:
            health = await answer.json()
        async with client.get(f"{base}/models", headers=auth) as answer:
            models = (answer.status, await answer.json())
        async with client.post(f"{base}/models/rank/rollback", json={}) as answer:
            acted = answer.status
    return {
        "health": health,
        "models": models,
        "acted": acted,
        "ctr": ctr_app[SEEN],
        "rank": rank_app[SEEN],
    }


def test_the_front_merges_every_workers_drift_and_lineage_and_routes_model_actions() -> None:
    out = asyncio.run(_through_the_front((True, True)))
    assert set(out["health"]["drift"]) == {"ctr", "rank"}
    status, models = out["models"]
    assert status == 200 and set(models) == {"ctr", "rank"} and models["rank"]["serving"] == 1
    assert ("/models", f"Bearer {READER_TOKEN}") in out["ctr"]  # the caller's token goes along
    assert out["acted"] == 200 and out["rank"][-1] == ("/models/rank/rollback", None)
    assert all(path == "/models" for path, _ in out["ctr"])  # rank's action never reached ctr's worker

    status, models = asyncio.run(_through_the_front((False, True)))["models"]
    assert status == 200 and set(models) == {"rank"}  # one worker without lineage: the others' still show
    status, _ = asyncio.run(_through_the_front((False, False)))["models"]
    assert status == 404  # no worker keeps lineage: the page says "not available"

"""Serve routes on a real aiohttp server on loopback, with tokens held in memory."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from streams.auth import HttpSecurity
from streams.http import HasRoutes, make_app
from streams.tokens import Role, TokenStore, new_token


@dataclass
class Served:
    """A running app: its base URL, its security, and a token per role (named after the role)."""

    base: str
    security: HttpSecurity
    tokens: dict[str, str]

    def headers(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}


def tokens_for_roles() -> tuple[TokenStore, dict[str, str]]:
    store, tokens = TokenStore(), {}
    for role in Role:
        token, record = new_token(role.label, role)
        store.apply(record)
        tokens[role.label] = token
    return store, tokens


@dataclass
class Server:
    """An aiohttp app served from its own event loop in a thread (so tests stay synchronous)."""

    app: web.Application

    def __enter__(self) -> str:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __exit__(self, *_: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def serve(services: list[HasRoutes], security: HttpSecurity | None = None) -> Iterator[Served]:
    """Serve ``services``; a generator for fixtures."""
    store, tokens = tokens_for_roles()
    security = security or HttpSecurity(store=store)
    if security.store is not store:
        for record in store.records():
            security.store.apply(record)
    with Server(make_app(services, security=security)) as base:
        yield Served(base, security, tokens)


async def fetch(
    method: str, url: str, headers: dict[str, str] | None = None, data: Any = None, json: Any = None
) -> tuple[int, dict[str, str], Any]:
    """Status, headers and body (JSON when it is JSON) of one request."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, data=data, json=json) as answer,
    ):
        raw = await answer.read()
        body: Any = raw.decode(errors="replace")
        if answer.content_type == "application/json":
            body = await answer.json()
        return answer.status, dict(answer.headers), body


def request(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    return asyncio.run(fetch(method, url, **kwargs))


def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False

"""A bounded HTTP load generator for loopback benchmarks: latency percentiles that do not hide the tail.

``open_loop`` (the default for latency numbers) schedules request k at ``start + k / rate`` whatever
the answers do, and measures each latency from that scheduled time: a stalled server makes the
requests behind it late, and that lateness is counted (no coordinated omission). A light schedule
(up to ``PRECISE_RATE``, the lone user's p50) sends each request at its time to the microsecond,
where the loop's millisecond timers alone sent up to 0.3 ms early or 1 ms late. Its client is a
bare HTTP/1.1 one over keep-alive connections (a new one whenever every open one is busy), about
a quarter of aiohttp's CPU per request: on a shared 2-core machine the generator itself must not be
what saturates first (``gen lag99`` says how late it sent). ``load`` is the closed loop (a fixed
number of aiohttp clients, each waiting for its answer), kept for ``bench/stream_services.py``,
whose numbers are throughput under concurrency.

Every run is bounded by a time limit and only ever targets loopback URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector

from streams.heap import settle_heap

Target = str | Callable[[int], str]
JSON_HEADERS = {"Content-Type": "application/json"}
#: Seconds before an open-loop request counts as failed.
TIMEOUT_S = 10.0
#: Open-loop rates up to this many requests/s send on time to the microsecond (``_send_time``).
PRECISE_RATE = 50.0
#: How long before a request is due such a schedule stops sleeping and spins.
SPIN_S = 0.0015


@dataclass
class LoadReport:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    #: Open loop only: how late the generator itself sent each request (its own saturation).
    send_lag_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def row(self, label: str) -> str:
        late = float(np.percentile(self.send_lag_ms, 99)) if len(self.send_lag_ms) else float("nan")
        return (
            f"{label:<44}{self.requests:>8}{self.errors:>7}{self.rate:>10,.0f}"
            f"{self.percentile(50):>9.2f}{self.percentile(99):>9.2f}{self.latencies_ms.max(initial=0):>9.1f}"
            f"{late:>11.2f}"
        )


HEADER = (
    f"{'load':<44}{'requests':>8}{'errors':>7}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    f"{'gen lag99':>11}"
)


def _check_loopback(url: Target) -> None:
    if not (url(0) if callable(url) else url).startswith(("http://127.", "http://localhost")):
        raise ValueError("the load generator only targets loopback addresses")


async def _request(http: ClientSession, method: str, target: str, payload: bytes | None) -> bool:
    """One request; True if it failed (connection error, timeout or a 5xx answer)."""
    try:
        async with http.request(method, target, data=payload, headers=JSON_HEADERS) as answer:
            await answer.read()
            return answer.status >= 500
    except Exception:
        return True


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads whole answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, request: bytes) -> int:
        """Send ``request``; return the answer's status once its body has been read.

        The head is read in one call and searched, not read line by line: at 1,000 requests/s the
        generator's own CPU lands on the cores it measures.
        """
        self.writer.write(request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        start = head.find(b"\r\ncontent-length:")
        if start < 0:
            raise ConnectionError("an answer without Content-Length")
        length = int(head[start + 17 : head.index(b"\r\n", start + 2)])
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        self.writer.close()


def _prepared(method: str, url: str, payload: bytes | None) -> tuple[str, int, bytes]:
    """Host, port and the bytes of one request to ``url``."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
    body = payload or b""
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return parts.hostname or "127.0.0.1", parts.port or 80, request


async def _open(method: str, url: Target, body: bytes | None, rate: float, seconds: float) -> LoadReport:
    count = max(int(rate * seconds), 1)
    latencies = np.full(count, np.nan)
    send_lag = np.zeros(count)
    failed = np.zeros(count, bool)
    idle: list[_Connection] = []
    opened: list[_Connection] = []

    async def one(k: int, scheduled: float) -> None:
        send_lag[k] = (time.perf_counter() - scheduled) * 1000
        host, port, request = _prepared(method, url(k) if callable(url) else url, body)
        connection = None
        try:
            if idle:
                connection = idle.pop()
            else:  # every open connection is busy: no client-side queue, lateness shows as latency
                connection = _Connection(*await asyncio.open_connection(host, port))
                opened.append(connection)
            async with asyncio.timeout(TIMEOUT_S):  # no extra task per request, unlike wait_for
                status = await connection.send(request)
            failed[k] = status >= 500
            idle.append(connection)
        except (
            OSError,
            ValueError,
            IndexError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            failed[k] = True
            if connection is not None:
                connection.close()  # its answer may still come: never reuse it
        latencies[k] = (time.perf_counter() - scheduled) * 1000

    started = time.perf_counter()
    tasks = []
    precise = rate <= PRECISE_RATE
    try:
        for k in range(count):
            scheduled = started + k / rate
            await _send_time(scheduled, precise, lambda: len(idle) == len(opened))
            tasks.append(asyncio.create_task(one(k, scheduled)))
        await asyncio.gather(*tasks)
    finally:
        for connection in opened:
            with contextlib.suppress(Exception):
                connection.close()
    elapsed = time.perf_counter() - started
    return LoadReport(count, int(failed.sum()), elapsed, latencies, send_lag)


async def _send_time(scheduled: float, precise: bool, quiet: Callable[[], bool]) -> None:
    """Return at ``scheduled`` (``time.perf_counter`` seconds); to the microsecond if ``precise``.

    The event loop's timers have millisecond resolution: a request due in 0.3 ms went out up to
    0.3 ms early or 1 ms late (measured: 0.2-0.34 ms late at p50 at 20 req/s, against a 3 ms
    answer). Counted from the schedule, that is the generator's error, not the server's latency.
    A ``precise`` wait sleeps until ``SPIN_S`` before the time and spins the rest, at most 7.5% of
    a core at ``PRECISE_RATE``; it spins only while ``quiet()`` says no request is in flight (a
    spin would hold its answer), and else yields to the loop until the time has come.
    """
    delay = scheduled - time.perf_counter()
    if not precise:
        if delay > 0:
            await asyncio.sleep(delay)
        return
    if delay > SPIN_S:
        await asyncio.sleep(delay - SPIN_S)
    while time.perf_counter() < scheduled:
        if not quiet():
            await asyncio.sleep(0)


def open_loop(
    method: str, url: Target, body: Any = None, rate: float = 200.0, seconds: float = 10.0
) -> LoadReport:
    """Send ``rate`` requests/s for ``seconds`` on a fixed schedule; latency counts from the schedule.

    ``body`` is JSON-encoded once (the same payload every request, so the client's own cost is small).
    """
    _check_loopback(url)
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be positive, got {rate} and {seconds}")
    payload = None if body is None else json.dumps(body).encode()
    with frozen_heap():
        return uvloop.run(_open(method, url, payload, rate, seconds))  # the generator's own CPU: less of it


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """What the calling process holds, out of the garbage collector's passes while the schedule runs.

    A bench that generates load also holds its data (the feeder's 100,000s of records): a full
    collection over them stalled the schedule by 58-64 ms at p99 at 1,000 req/s (``gen lag99``,
    measured), which then showed as the server's tail. A heap the caller froze before stays frozen
    (``gc.unfreeze`` cannot tell its objects from these).
    """
    frozen_before = gc.get_freeze_count() > 0
    settle_heap()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


async def _closed(
    method: str,
    url: Target,
    body: Callable[[int], Any] | None,
    concurrency: int,
    requests: int,
    time_limit_s: float,
) -> LoadReport:
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + time_limit_s

    async def client(http: ClientSession) -> None:
        nonlocal issued, errors
        while issued < requests and time.perf_counter() < deadline:
            i = issued
            issued += 1
            payload = None if body is None else json.dumps(body(i)).encode()
            started = time.perf_counter()
            errors += await _request(http, method, url(i) if callable(url) else url, payload)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    connector = TCPConnector(limit=concurrency)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=30)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return LoadReport(len(latencies), errors, time.perf_counter() - started, np.array(latencies))


def load(
    method: str,
    url: Target,
    body: Callable[[int], Any] | None = None,
    concurrency: int = 8,
    requests: int = 2000,
    time_limit_s: float = 30.0,
) -> LoadReport:
    """Closed loop: at most ``requests`` requests from ``concurrency`` clients within ``time_limit_s``."""
    _check_loopback(url)
    return asyncio.run(_closed(method, url, body, concurrency, requests, time_limit_s))

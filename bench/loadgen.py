"""A bounded HTTP load generator for loopback benchmarks: latency percentiles under concurrency.

Every run is bounded by both a request count and a time limit, and only ever targets the URL it is
given (the benchmarks pass 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import ClientSession, ClientTimeout, TCPConnector


@dataclass
class LoadReport:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def row(self, label: str) -> str:
        return (
            f"{label:<44}{self.requests:>8}{self.errors:>7}{self.rate:>10,.0f}"
            f"{self.percentile(50):>9.2f}{self.percentile(99):>9.2f}"
        )


HEADER = f"{'load':<44}{'requests':>8}{'errors':>7}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"


async def _run(
    method: str,
    url: str | Callable[[int], str],
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
            target = url(i) if callable(url) else url
            payload = None if body is None else json.dumps(body(i)).encode()
            started = time.perf_counter()
            try:
                async with http.request(
                    method, target, data=payload, headers={"Content-Type": "application/json"}
                ) as answer:
                    await answer.read()
                    if answer.status >= 500:
                        errors += 1
            except Exception:
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    connector = TCPConnector(limit=concurrency)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=30)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return LoadReport(len(latencies), errors, time.perf_counter() - started, np.array(latencies))


def load(
    method: str,
    url: str | Callable[[int], str],
    body: Callable[[int], Any] | None = None,
    concurrency: int = 8,
    requests: int = 2000,
    time_limit_s: float = 30.0,
) -> LoadReport:
    """Send at most ``requests`` requests from ``concurrency`` clients within ``time_limit_s``."""
    if not (url(0) if callable(url) else url).startswith(("http://127.", "http://localhost")):
        raise ValueError("the load generator only targets loopback addresses")
    return asyncio.run(_run(method, url, body, concurrency, requests, time_limit_s))

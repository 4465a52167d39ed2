"""Hostile HTTP requests against forecast, ctr and rank served in process: only the allowed answers.

The same generator as ``bench/http_fuzz.py`` (which runs >= 10,000 against real worker and replica
processes), here with fewer requests so the suite stays quick: no 500, no hang, every route hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.common import observations
from bench.http_fuzz import ROUTES, Fuzzer, fire, report, synthetic_impressions, synthetic_queries
from rankers.service import task_id_for
from streams import registry
from streams.auth import HttpSecurity
from streams.limits import Limits
from streams.service import ModelService
from streams.topics import topic_name
from tests.models.outputs import record_outputs

from .conftest import Served, serve

REQUESTS = 2500
BODY_LIMIT = 256 * 1024
QUERIES = synthetic_queries(6)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> list[ModelService]:
    """forecast, ctr (with a first version) and rank (with queued tasks), producing into a list."""
    home = tmp_path_factory.mktemp("fuzz")
    services = [
        registry.build("forecast", home / "forecast"),
        registry.build("ctr", home / "ctr", swap_interval_s=0.0, batch_size=256),
        registry.build("rank", home / "rank", budget=6, budget_window=6),
    ]
    for service in services:
        record_outputs(service)
    forecast, ctr, rank = services
    forecast.process(topic_name("observations"), observations(400, series=2))
    ctr.process(topic_name("impressions"), synthetic_impressions(1024))
    rank.process(topic_name("queries"), QUERIES)
    return services


@pytest.fixture(scope="module")
def served(services: list[ModelService]) -> Iterator[Served]:
    # a small body limit keeps the huge bodies cheap; the limits themselves are the defaults' shape
    security = HttpSecurity(
        limits=Limits.from_settings(max_body_bytes=BODY_LIMIT, write_rate=1000, write_burst=1000)
    )
    yield from serve(services, security)


def test_the_fuzzer_knows_every_route(services: list[ModelService], served: Served) -> None:
    routes = {(r.method, r.path) for service in services for r in service.routes()}
    assert routes <= set(ROUTES), routes - set(ROUTES)


def test_hostile_requests_get_only_allowed_answers(served: Served) -> None:
    ids = {"series": ["k0", "k1"], "task": [task_id_for(q) for q in QUERIES]}
    fuzzer = Fuzzer(served.tokens, ids, max_body_bytes=BODY_LIMIT, seed=11)
    tally = asyncio.run(fire(served.base, [fuzzer.request() for _ in range(REQUESTS)], concurrency=8))
    lines: list[str] = []
    report(tally, lines.append)
    assert tally.ok(), "\n".join(lines)
    assert tally.tried == REQUESTS
    assert tally.sent >= 0.95 * REQUESTS
    for kind in ("huge", "deep", "bad-json", "wrong-types", "path-trick", "forged-token", "no-token"):
        assert tally.kinds_tried[kind] > 0, kind
    assert {400, 401, 403, 404, 405, 413}.issubset(tally.statuses), tally.statuses
    assert tally.statuses[200] > 0

"""Forecast versions served by hand through ``POST /models/forecast/promote|rollback`` and
``driftline models``, on a real aiohttp server (in process, no Kafka; a synthetic sine stream)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from forecasters.service import ForecastService
from streams.auth import HttpSecurity
from streams.client import call
from streams.http import make_app
from streams.lifecycle_cli import register
from streams.lifecycle_routes import LifecycleRoutes
from streams.schemas import Outcome
from streams.service import Output
from streams.tokens import Role, TokenStore
from tests.conftest import MintedTokens
from tests.forecasters.test_forecast_promotion import GATE, SPEC, feed, forecast_from
from tests.security.conftest import Server


@dataclass
class Trainer:
    """A forecast trainer and what it sent to the control topic (a producer stub)."""

    service: ForecastService
    sent: list[Outcome] = field(default_factory=list)

    async def emit(self, output: Output) -> None:
        assert isinstance(output.record, Outcome)
        self.sent.append(output.record)

    def events(self) -> list[tuple[int, str, str]]:
        body = self.service.lineage_body()
        return [(v["version"], e["action"], e["reason"]) for v in body["versions"] for e in v["history"]]


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    """Serving v4 with v1 and v2 kept (a candidate every 4 windows, synthetic sine; v3 was rejected)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    service = ForecastService(SPEC, promotion=GATE, checkpoint_root=tmp_path)
    feed(service, range(29))
    assert [f.version for f in service.gate.kept] == [1, 2, 4] and service.model_version() == 4
    trainer = Trainer(service)
    service.emit = trainer.emit
    return trainer


@pytest.fixture
def reader(minted_tokens: MintedTokens) -> str:
    return minted_tokens.mint("someone", Role.READER)


@pytest.fixture
def base(trainer: Trainer, minted_tokens: MintedTokens, reader: str) -> Iterator[str]:
    """The lifecycle routes with every route behind a token (the test's admin sends by default)."""
    store = TokenStore()
    for record in minted_tokens.records:
        store.apply(record)
    app = make_app(
        [LifecycleRoutes([trainer.service])], security=HttpSecurity(store=store, queries_open=False)
    )
    with Server(app) as url:
        yield url


def driftline_models(*argv: str) -> int:
    """``driftline models ...`` through the group's own parser (as streams.cli registers it)."""
    parser = argparse.ArgumentParser(prog="driftline")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *argv])
    return int(args.func(args))


def test_rollback_and_promote_serve_kept_versions_durably_and_are_recorded(
    base: str, trainer: Trainer, reader: str
) -> None:
    service = trainer.service
    assert call("POST", f"{base}/models/forecast/rollback", token=reader)[0] == 403
    assert service.model_version() == 4 and not trainer.sent
    v2 = service.gate.find(2)
    assert v2 is not None
    assert call("POST", f"{base}/models/forecast/rollback") == (
        200,
        {"serving": 2, "was": 4, "action": "rolled_back"},
    )
    assert service.model_version() == 2 and len(trainer.sent) == 1, "answered once on the control topic"
    assert np.allclose(forecast_from(service.learner, 28), forecast_from(v2.learner, 28), atol=1e-6)
    status, answer = call("POST", f"{base}/models/forecast/promote")  # the newest kept
    assert (status, answer) == (200, {"serving": 4, "was": 2, "action": "promoted"})
    assert call("POST", f"{base}/models/forecast/rollback", {"version": 1})[1]["serving"] == 1
    body = call("GET", f"{base}/models")[1]["forecast"]
    assert body["serving"] == 1 == service.model_version()
    assert [e for e in trainer.events() if e[2].startswith("by hand")] == [
        (1, "rolled_back", "by hand: v1 serves instead of v4"),
        (2, "rolled_back", "by hand: v2 serves instead of v4"),
        (4, "promoted", "by hand: v4 serves instead of v2"),
    ]
    assert [o.seq for o in trainer.sent] == [1, 2, 3] and {o.kind for o in trainer.sent} == {"serve"}
    for outcome in trainer.sent:  # the control topic brings each back: applied already, a no-op
        assert not service.apply_outcome_once(outcome)
    assert service.model_version() == 1


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/models/forecast/promote", None, "no kept version newer than the serving one (kept: [1, 2, 4])"),
        ("/models/forecast/promote", {"version": 3}, "version 3 is not kept (kept: [1, 2, 4])"),
        ("/models/forecast/rollback", {"version": 9}, "version 9 is not kept (kept: [1, 2, 4])"),
    ],
)
def test_a_version_that_is_not_kept_is_a_409_with_the_kept_list(
    base: str, trainer: Trainer, path: str, body: object, says: str
) -> None:
    status, answer = call("POST", f"{base}{path}", body)
    assert status == 409 and says in answer["error"]
    assert trainer.service.model_version() == 4 and not trainer.sent


def test_no_older_version_is_a_409(base: str, trainer: Trainer) -> None:
    assert call("POST", f"{base}/models/forecast/rollback", {"version": 1})[0] == 200
    status, answer = call("POST", f"{base}/models/forecast/rollback")
    assert status == 409 and answer["error"] == "no version older than 1 is kept (kept: [1, 2, 4])"


def test_cli_rolls_back_and_promotes_forecast(
    base: str, trainer: Trainer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert driftline_models("rollback", "forecast", "--url", base) == 0
    assert capsys.readouterr().out == "forecast: now serving version 2 (was 4)\n"
    assert driftline_models("promote", "forecast", "4", "--url", base) == 0
    assert capsys.readouterr().out == "forecast: now serving version 4 (was 2)\n"
    assert driftline_models("promote", "forecast", "5", "--url", base) == 1
    assert "version 5 is not kept" in capsys.readouterr().err
    assert driftline_models("list", "forecast", "--url", base) == 0
    listing = capsys.readouterr().out
    assert (
        listing.startswith("forecast: serving version 4\n") and "by hand: v4 serves instead of v2" in listing
    )

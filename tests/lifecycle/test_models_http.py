"""``GET /models`` and the admin-only promote/rollback routes on a real aiohttp server."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.ctr.service import CtrService
from streams.auth import HttpSecurity
from streams.client import call
from streams.http import make_app
from streams.lifecycle_cli import register
from streams.lifecycle_routes import LifecycleRoutes
from streams.service import Output
from streams.tally import TallyService
from streams.tokens import Role, TokenStore
from tests.conftest import MintedTokens
from tests.models.synthetic import impressions, make_service
from tests.security.conftest import Server

VERSION_KEYS = {"version", "trained_at", "offsets", "validation", "history"}
EVENT_KEYS = {"action", "at", "reason", "evidence"}


@pytest.fixture
def ctr(tmp_path: Path) -> CtrService:
    """A CTR trainer with three versions (each trained on 256 more impressions) and a producer stub."""
    service, clock = make_service(tmp_path)
    service.batch_offsets = {"driftline.impressions:0": 255}
    for seed in range(3):
        service.process("driftline.impressions", impressions(256, seed=seed))
        clock.now += 60  # the next batch brings a candidate before the gate
    sent: list[Output] = []

    async def emit(output: Output) -> None:
        sent.append(output)

    service.emit = emit
    return service


@pytest.fixture
def tokens(minted_tokens: MintedTokens) -> dict[str, str]:
    """A token per role: the test's admin (sent by default), a reader and an annotator."""
    return {
        "admin": minted_tokens.admin,
        "reader": minted_tokens.mint("someone", Role.READER),
        "annotator": minted_tokens.mint("grader", Role.ANNOTATOR),
    }


@pytest.fixture
def base(ctr: CtrService, minted_tokens: MintedTokens, tokens: dict[str, str]) -> Iterator[str]:
    """The lifecycle routes served with queries closed: every route needs a token."""
    store = TokenStore()
    for record in minted_tokens.records:
        store.apply(record)
    security = HttpSecurity(store=store, queries_open=False)
    with Server(make_app([LifecycleRoutes([ctr, TallyService()])], security=security)) as url:
        yield url


def test_models_lists_every_service_in_the_lineage_shape(
    base: str, ctr: CtrService, tokens: dict[str, str]
) -> None:
    assert call("GET", f"{base}/models", token="nope")[0] == 401
    status, body = call("GET", f"{base}/models", token=tokens["reader"])
    assert status == 200 and set(body) == {"ctr", "tally"}
    for value in body.values():
        assert set(value) == {"serving", "versions"}
        assert value["versions"] and all(set(v) == VERSION_KEYS for v in value["versions"])
        assert value["serving"] in [v["version"] for v in value["versions"]]
    versions = body["ctr"]["versions"]
    assert body["ctr"]["serving"] == ctr.model_version() == versions[-1]["version"]
    events = [e for v in versions for e in v["history"]]
    assert events and all(set(e) == EVENT_KEYS for e in events)
    assert {e["action"] for e in events} <= {"promoted", "rejected"}
    gated = next(v for v in versions if v["validation"].get("serving") is not None)
    assert gated["validation"]["metric"] == "logloss" and gated["validation"]["window"]["samples"] == 256
    assert body["tally"]["versions"][0]["history"] == []


def test_promote_and_rollback_are_admin_only_and_recorded(
    base: str, ctr: CtrService, tokens: dict[str, str]
) -> None:
    serving = ctr.model_version()
    kept = ctr.history.numbers()
    for role in ("reader", "annotator"):
        assert call("POST", f"{base}/models/ctr/rollback", token=tokens[role])[0] == 403
    assert ctr.model_version() == serving
    status, answer = call("POST", f"{base}/models/ctr/rollback")  # $DRIFTLINE_TOKEN: the admin's
    assert status == 200 and answer == {"serving": kept[-2], "was": serving, "action": "rolled_back"}
    status, answer = call("POST", f"{base}/models/ctr/promote", {"version": serving})
    assert status == 200 and answer["serving"] == serving == ctr.model_version()
    body = call("GET", f"{base}/models")[1]["ctr"]
    actions = [(v["version"], e["action"]) for v in body["versions"] for e in v["history"]]
    assert (kept[-2], "rolled_back") in actions and actions.count((serving, "promoted")) == 2
    assert body["serving"] == serving


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/models/tally/rollback", None, 409, "keeps no versions"),
        ("/models/nope/promote", None, 404, "no service 'nope'"),
        ("/models/ctr/rollback", {"version": "2"}, 400, "version"),
        ("/models/ctr/rollback", {"version": 2, "extra": 1}, 400, "version"),
        ("/models/ctr/promote", {"version": 99}, 409, "version 99 is not kept"),
    ],
)
def test_bad_requests_say_why(base: str, path: str, body: object, status: int, says: str) -> None:
    answer = call("POST", f"{base}{path}", body)
    assert answer[0] == status and says in answer[1]["error"]


def driftline_models(*argv: str) -> int:
    """``driftline models ...`` through the group's own parser (as streams.cli registers it)."""
    parser = argparse.ArgumentParser(prog="driftline")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *argv])
    return int(args.func(args))


def test_cli_lists_promotes_and_rolls_back(
    base: str, ctr: CtrService, tokens: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    serving, previous = ctr.model_version(), ctr.history.numbers()[-2]
    assert driftline_models("list", "ctr", "--url", base) == 0
    listing = capsys.readouterr().out
    assert listing.startswith(f"ctr: serving version {serving}\n") and f"* v{serving}" in listing
    assert "promoted" in listing and "tally" not in listing
    assert driftline_models("rollback", "ctr", "--url", base, "--token", tokens["reader"]) == 1
    assert "403" in capsys.readouterr().err
    assert driftline_models("rollback", "ctr", "--url", base) == 0
    assert capsys.readouterr().out == f"ctr: now serving version {previous} (was {serving})\n"
    assert driftline_models("promote", "ctr", str(serving), "--url", base) == 0
    assert ctr.model_version() == serving
    assert driftline_models("list", "nope", "--url", base) == 1
    assert "no service 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        driftline_models("promote", "ctr", "zero", "--url", base)

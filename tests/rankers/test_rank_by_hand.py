"""Rank boosters served by hand: ``POST /models/rank/promote|rollback`` on a real aiohttp server (admin
only, recorded in the lineage), and the control-topic outcome behind it, applied exactly once (synthetic
queries from the conftest)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator

import pytest

from rankers.records import query_records
from rankers.service import RankService
from streams.auth import HttpSecurity
from streams.client import call
from streams.http import make_app
from streams.lifecycle_cli import register
from streams.lifecycle_routes import LifecycleRoutes
from streams.schemas import Outcome, Query
from streams.tokens import Role, TokenStore
from tests.conftest import MintedTokens
from tests.security.conftest import Server

from .conftest import synthetic_queries
from .service_helpers import CONTROL, Harness, outcomes_of
from .test_rank_promotion import Truth, gated, learn, rank


@pytest.fixture
def data() -> tuple[list[Query], Truth]:
    return query_records(synthetic_queries(40, docs=10))


def two_versions(data: tuple[list[Query], Truth]) -> Harness:
    """v1 (4 queries) and v2 (16 queries), which passed the gate on 4 later ones: both kept, v2 serving
    on probation against v1."""
    queries, truth = data
    h = gated()
    learn(h, queries[:4], truth, offset=3)
    learn(h, queries[4:16], truth, offset=15)
    learn(h, queries[16:20], truth, offset=19)
    gate = h.service.gate
    assert gate.serving_version == 2 and [c.version for c in gate.kept] == [1, 2]
    assert gate.probation is not None and gate.probation.predecessor == 1
    return h


def actions(service: RankService) -> list[tuple[int, str, str]]:
    body = service.lineage_body()
    return [(v["version"], e["action"], e["reason"]) for v in body["versions"] for e in v["history"]]


@pytest.fixture
def served(
    data: tuple[list[Query], Truth], minted_tokens: MintedTokens
) -> Iterator[tuple[str, Harness, str]]:
    """The lifecycle routes and the rank routes of a two-version rank service, queries closed; the
    URL, the service and a reader's token."""
    h = two_versions(data)
    reader = minted_tokens.mint("someone", Role.READER)
    store = TokenStore()
    for record in minted_tokens.records:
        store.apply(record)
    security = HttpSecurity(store=store, queries_open=False)
    with Server(make_app([LifecycleRoutes([h.service]), h.service], security=security)) as url:
        yield url, h, reader


def test_rollback_and_promote_by_hand_are_admin_only_serve_kept_boosters_and_are_recorded(
    served: tuple[str, Harness, str], data: tuple[list[Query], Truth]
) -> None:
    base, h, reader = served
    queries = data[0]
    assert call("POST", f"{base}/models/rank/rollback", token=reader)[0] == 403
    assert h.service.model_version() == 2
    status, answer = call("POST", f"{base}/models/rank/rollback")  # $DRIFTLINE_TOKEN: the admin's
    assert status == 200 and answer == {"serving": 1, "was": 2, "action": "rolled_back"}
    assert h.service.model_version() == 1 and rank(h, queries[30])["model_version"] == 1
    assert h.service.gate.probation is None, "serving by hand ends the probation"
    [sent] = serves(h)
    assert (sent.kind, sent.key, sent.data["version"]) == ("serve", "rank", 1), "on the control topic first"
    status, answer = call("POST", f"{base}/models/rank/promote")  # the newest kept: v2
    assert status == 200 and answer == {"serving": 2, "was": 1, "action": "promoted"}
    body = call("GET", f"{base}/models", token=reader)[1]["rank"]
    assert body["serving"] == 2 == h.service.model_version()
    assert by_hand(h.service) == [(1, "rolled_back"), (2, "promoted")], "the lineage says by hand"
    status, answer = call("POST", f"{base}/models/rank/promote", {"version": 99})
    assert status == 409 and answer["error"] == "version 99 is not kept (kept: [1, 2]); it cannot serve"
    assert call("POST", f"{base}/models/rank/rollback", {"version": 1})[0] == 200
    status, answer = call("POST", f"{base}/models/rank/rollback")
    assert status == 409 and "no version older than 1 is kept (kept: [1, 2])" in answer["error"]


def test_cli_rolls_back_and_promotes_rank(
    served: tuple[str, Harness, str], capsys: pytest.CaptureFixture[str]
) -> None:
    base, h, _ = served
    parser = argparse.ArgumentParser(prog="driftline")
    register(parser.add_subparsers(dest="command", required=True))

    def driftline_models(*argv: str) -> int:
        args = parser.parse_args(["models", *argv])
        return int(args.func(args))

    assert driftline_models("rollback", "rank", "--url", base) == 0
    assert capsys.readouterr().out == "rank: now serving version 1 (was 2)\n"
    assert driftline_models("promote", "rank", "2", "--url", base) == 0
    assert h.service.model_version() == 2


def test_a_serve_by_hand_is_applied_once_and_a_replay_applies_it_where_it_was_decided(
    data: tuple[list[Query], Truth],
) -> None:
    queries, truth = data
    early = gated()
    learn(early, queries[:4], truth, offset=3)  # what an older checkpoint holds: v1 only, 4 labels
    older = early.service.state_dict()
    h = two_versions(data)
    asyncio.run(h.service.serve_version("rolled_back", None))
    [outcome] = serves(h)
    assert outcome.data["learned"] == 20 and len(outcome.data["sha256"]) == 64
    history = actions(h.service)
    result = h.service.process(CONTROL, [outcome])  # the worker reads its own decision back
    assert result.metrics["outcomes_applied"] == 0.0 and actions(h.service) == history

    replay = gated()  # a crash: the checkpoint is older than the decision and the labels behind it
    replay.service.load_state_dict(older)
    replay.service.process(CONTROL, [outcome])
    assert replay.service.gate.pending and not by_hand(replay.service), "it waits for 20 labels"
    learn(replay, queries[4:16], truth, offset=15)
    learn(replay, queries[16:20], truth, offset=19)
    assert not replay.service.gate.pending and by_hand(replay.service) == [(1, "rolled_back")]
    assert replay.service.gate.serving is not None
    assert replay.service.gate.serving.model == h.service.gate.serving.model  # type: ignore[union-attr]
    replay.service.process(CONTROL, [outcome])
    assert by_hand(replay.service) == [(1, "rolled_back")], "applied once"


def serves(h: Harness) -> list[Outcome]:
    """The serve outcomes sent to the control topic (the leases of the labeling are there too)."""
    return [o for o in outcomes_of(h.emitted) if o.kind == "serve"]


def by_hand(service: RankService) -> list[tuple[int, str]]:
    return [(v, a) for v, a, reason in actions(service) if reason.startswith("by hand")]


def test_a_malformed_serve_outcome_is_refused_with_the_reason(data: tuple[list[Query], Truth]) -> None:
    h = two_versions(data)
    bad = Outcome(service="rank", kind="serve", key="rank", seq=1, ts=0.0, data={"version": 1})
    result = h.service.process(CONTROL, [bad])
    assert "malformed serve outcome 1: KeyError" in result.rejected[0] and h.service.model_version() == 2


def test_a_booster_too_large_for_a_control_record_is_refused(
    data: tuple[list[Query], Truth], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = two_versions(data)
    monkeypatch.setattr("rankers.by_hand.record_limits", lambda: (5_000, 16))
    with pytest.raises(Exception, match="too large for one control record") as err:
        asyncio.run(h.service.serve_version("rolled_back", None))
    assert getattr(err.value, "status", None) == 409 and h.service.model_version() == 2

"""The rank service's promotion gate (in process, synthetic queries from the conftest): a retrained
booster serves ``/rank`` only after it did no worse than the serving one on later labels, and every
decision is in the lineage with its evidence."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from rankers.data import MAX_GRADE
from rankers.promotion import GateConfig
from rankers.records import query_records
from rankers.service import RankService, build_service
from streams.lifecycle_routes import LifecycleRoutes
from streams.schemas import Query
from streams.service import ApiError, ApiRequest

from .conftest import synthetic_queries
from .service_helpers import LABELS, QUERIES, FakeClock, Harness
from .test_service import make

Truth = dict[str, dict[str, int]]


@pytest.fixture
def data() -> tuple[list[Query], Truth]:
    return query_records(synthetic_queries(40, docs=10))


def gated(**gate: float) -> Harness:
    """Every query becomes a task; the gate decides on 4 judged queries unless told otherwise."""
    config = GateConfig(**{"promotion_queries": 4, **gate})  # type: ignore[arg-type]
    return make(FakeClock(), budget=64, budget_window=64, min_quantile=0.0, gate=config)


def learn(h: Harness, queries: list[Query], grades: Truth, offset: int) -> None:
    """Queue ``queries``, label them with ``grades`` and learn them as one labels batch, the labels
    topic's last offset being ``offset`` (what the runner sets before a batch)."""
    h.service.process(QUERIES, queries)
    h.service.batch_offsets = {f"{LABELS}:0": offset}
    assert h.annotate_all(grades) == len(queries)


def inverted(truth: Truth) -> Truth:
    """Grades turned upside down: what a confused (or hostile) annotator would submit."""
    return {q: {d: MAX_GRADE - g for d, g in grades.items()} for q, grades in truth.items()}


def rank(h: Harness, query: Query) -> dict:
    docs = [d.model_dump() for d in query.documents]
    return h.call("POST", "/rank", body={"documents": docs}).body


def record(h: Harness, version: int) -> dict:
    [found] = [v for v in h.service.lineage_body()["versions"] if v["version"] == version]
    return found


def decided(service: RankService) -> list[tuple[int, str, dict]]:
    """Every decision in the lineage: version, action and evidence (not the wall-clock time)."""
    versions = service.lineage_body()["versions"]
    return [(v["version"], e["action"], e["evidence"]) for v in versions for e in v["history"]]


def test_the_first_version_serves_at_once_and_says_it_had_no_held_back_queries(data) -> None:
    queries, truth = data
    h = gated()
    learn(h, queries[:3], truth, offset=2)
    assert h.service.model_version() == 1 and rank(h, queries[30])["model_version"] == 1
    first = record(h, 1)
    assert [e["action"] for e in first["history"]] == ["promoted"]
    evidence = first["history"][0]["evidence"]
    assert evidence["metric"] == "train ndcg@10" and evidence["serving"] is None
    assert evidence["lower_is_better"] is False and first["history"][0]["reason"].startswith("first version")
    assert evidence["window"]["queries"] == 0 and evidence["window"]["trained_queries"] == 3
    assert first["offsets"] == {f"{LABELS}:0": 2}


def test_a_better_candidate_is_promoted_after_its_window_with_its_evidence(data) -> None:
    queries, truth = data
    h = gated(promotion_margin=0.0)  # no slack: it must do at least as well as serving
    learn(h, queries[:1], truth, offset=0)  # v1: one query
    learn(h, queries[1:16], truth, offset=15)  # v2, the candidate: 16 queries
    assert h.service.model_version() == 1 and h.service.ranker.n_updates == 2
    learn(h, queries[16:18], truth, offset=17)  # 2 held-back queries: too few, it waits
    assert h.service.model_version() == 1 and h.service.gate.window.judged == 2
    learn(h, queries[18:21], truth, offset=20)  # 5 judged: the gate decides
    assert h.service.model_version() == 2
    assert rank(h, queries[30])["model_version"] == 2
    promoted = record(h, 2)
    assert promoted["offsets"] == {f"{LABELS}:0": 15}  # what v2 learned from
    [event] = promoted["history"]
    evidence = event["evidence"]
    assert event["action"] == "promoted" and evidence["metric"] == "ndcg@10"
    assert evidence["serving_version"] == 1 and evidence["margin"] == 0.0
    assert evidence["candidate"] >= evidence["serving"] and evidence["lower_is_better"] is False
    assert evidence["window"] == {
        "queries": 5,
        "judged": 5,
        "after": {f"{LABELS}:0": 15},
        "to": {f"{LABELS}:0": 20},
    }
    probation = h.service.gate.probation  # v2 is on probation against v1: no candidate meanwhile
    assert probation is not None and (probation.version, probation.predecessor) == (2, 1)
    assert h.service.gate.candidate is None


def test_a_candidate_trained_on_inverted_grades_is_rejected_and_rank_keeps_the_old_booster(data) -> None:
    queries, truth = data
    h = gated()
    learn(h, queries[:4], truth, offset=3)
    before = rank(h, queries[30])
    learn(h, queries[4:16], inverted(truth), offset=15)  # v2: mostly upside-down labels
    learn(h, queries[16:20], truth, offset=19)
    assert h.service.ranker.n_updates == 3  # the ranker learned every batch...
    assert h.service.model_version() == 1  # ... but v2 did not pass
    assert rank(h, queries[30]) == before  # same booster, same ranking
    [event] = record(h, 2)["history"]
    evidence = event["evidence"]
    assert event["action"] == "rejected" and "ndcg@10" in event["reason"]
    assert evidence["candidate"] < evidence["serving"] * (1 - evidence["margin"])
    assert evidence["window"]["judged"] == 4 and evidence["window"]["to"] == {f"{LABELS}:0": 19}
    assert h.service.lineage_body()["serving"] == 1


def test_queries_without_a_relevant_document_count_but_are_not_judged(data) -> None:
    queries, truth = data
    h = gated()
    learn(h, queries[:4], truth, offset=3)
    learn(h, queries[4:8], truth, offset=7)
    blank = {q: dict.fromkeys(g, 0) for q, g in truth.items()}
    learn(h, queries[8:14], blank, offset=13)
    window = h.service.gate.window
    assert (window.queries, window.judged) == (6, 0) and h.service.lineage_body()["versions"][-1][
        "version"
    ] == 1


def test_the_gate_state_round_trips_so_a_replay_decides_alike(tmp_path: Path, data) -> None:
    queries, truth = data
    h = gated()
    learn(h, queries[:4], truth, offset=3)
    learn(h, queries[4:16], inverted(truth), offset=15)
    learn(h, queries[16:18], truth, offset=17)  # the candidate is half-way through its window
    replica = gated()
    replica.service.load_state_dict(h.service.state_dict())
    assert replica.service.gate.state_dict() == h.service.gate.state_dict()
    assert rank(replica, queries[30]) == rank(h, queries[30])
    for harness in (h, replica):
        learn(harness, queries[18:20], truth, offset=19)
    decisions = [decided(s) for s in (h.service, replica.service)]
    assert decisions[0] == decisions[1] and decisions[0][-1][:2] == (2, "rejected")


def test_a_checkpoint_from_before_the_gate_loads_with_its_newest_booster_serving(data) -> None:
    queries, truth = data
    h = gated()
    learn(h, queries[:4], truth, offset=3)
    learn(h, queries[4:8], truth, offset=7)
    old = h.service.state_dict()
    del old["gate"]  # what a checkpoint written before the gate holds
    restored = gated()
    restored.service.load_state_dict(old)
    assert restored.service.model_version() == 2 and rank(restored, queries[30])["model_version"] == 2
    assert restored.service.lineage_body()["serving"] == 2
    assert record(restored, 2)["history"][0]["action"] == "promoted"
    learn(restored, queries[8:12], truth, offset=11)  # the next retrain is the next candidate
    assert restored.service.gate.candidate is not None and restored.service.gate.candidate.version == 3


def test_a_gate_that_fails_is_undone_with_the_retrain(data, monkeypatch: pytest.MonkeyPatch) -> None:
    queries, truth = data
    h = gated()
    learn(h, queries[:4], truth, offset=3)
    learn(h, queries[4:8], truth, offset=7)
    before = h.service.gate.state_dict()

    def broken(*args: object) -> None:
        raise RuntimeError("simulated: scoring failed")

    monkeypatch.setattr("rankers.promotion.Window.add", broken)
    h.service.process(QUERIES, queries[8:10])
    for _ in range(2):
        task = h.next_task("ann")
        assert h.submit(task["task_id"], truth[task["query_id"]], "ann").status == 202
    result = h.service.process(LABELS, [o.record for o in h.emitted if o.topic == LABELS])
    assert all("retrain failed (RuntimeError: simulated" in why for why in result.rejected.values())
    assert h.service.ranker.n_updates == 2 and h.service.gate.state_dict() == before


def test_gets_models_answers_the_rank_lineage_and_a_rollback_with_nothing_older_is_refused(data) -> None:
    queries, truth = data
    h = gated()
    learn(h, queries[:4], truth, offset=3)
    routes = LifecycleRoutes([h.service])
    body = asyncio.run(routes.models(ApiRequest("GET", {}, {}, None))).body
    assert body["rank"] == h.service.lineage_body() and body["rank"]["serving"] == 1
    with pytest.raises(ApiError) as err:
        asyncio.run(routes.rollback(ApiRequest("POST", {"service": "rank"}, {}, None)))
    assert err.value.status == 409 and err.value.message == "no version older than 1 is kept (kept: [1])"


def test_gate_options_come_from_worker_options(tmp_path: Path) -> None:
    service = build_service(
        tmp_path, promotion_margin="0.1", promotion_queries=8, rollback_margin="0.2", rollback_queries="30",
        rollback_confirm="2", probation_queries=90, keep_versions="4", rounds=5,
    )  # fmt: skip
    assert service.gate.config == GateConfig(
        promotion_margin=0.1, promotion_queries=8, rollback_margin=0.2, rollback_queries=30,
        rollback_confirm=2, probation_queries=90, keep_versions=4,
    )  # fmt: skip
    rule = service.gate.rule
    assert (rule.margin, rule.samples, rule.length, rule.confirm, rule.hold_proven) == (0.2, 30, 90, 2, True)
    assert RankService().gate.config == GateConfig()
    for bad, says in (
        ({"promotion_margin": "a lot"}, "promotion_margin='a lot': expected a number"),
        ({"promotion_queries": 0}, "promotion_queries must be >= 1"),
        ({"promotion_margin": 1.5}, "promotion_margin must lie in"),
        (
            {"rollback_margin": -0.1},
            "rank rollback_margin, rollback_queries, rollback_confirm, probation_queries",
        ),
        ({"rollback_queries": "0"}, "rollback margin must be >= 0 and its sample counts and confirm >= 1"),
        (
            {"rollback_confirm": 2},
            "probation_queries=60 is shorter than rollback_confirm x rollback_queries = 80",
        ),
        ({"keep_versions": 1}, "keep_versions must be >= 2"),
        ({"probation_queries": -1}, "probation_queries must be >= 0"),
    ):
        with pytest.raises(ValueError, match=re.escape(says)):
            build_service(tmp_path, **bad)


def test_without_probation_the_gate_takes_the_next_candidate_at_once(data) -> None:
    queries, truth = data
    h = gated(promotion_margin=0.0, probation_queries=0)  # the gate alone, as before probation
    learn(h, queries[:1], truth, offset=0)
    learn(h, queries[1:16], truth, offset=15)
    learn(h, queries[16:21], truth, offset=20)
    gate = h.service.gate
    assert gate.serving_version == 2 and gate.probation is None
    assert gate.candidate is not None and gate.candidate.version == 3, "the newest checkpoint, at once"

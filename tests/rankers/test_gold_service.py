"""Gold tasks in the rank service: mixed into the queue at ``gold_rate`` from a held-out graded set,
scored per annotator on ``/labeling/status`` and never learned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankers.records import query_records
from rankers.service import RankService
from streams.schemas import Query

from .conftest import synthetic_queries
from .service_helpers import QUERIES, FakeClock, Harness


@pytest.fixture
def stream_and_gold(tmp_path: Path) -> tuple[list[Query], dict[str, dict[str, int]], Path]:
    """Eight stream queries and a gold file of four other graded queries."""
    queries, truth = query_records(synthetic_queries(12, docs=6))
    gold = tmp_path / "gold.jsonl"
    rows = [{"query": q.model_dump(mode="json"), "grades": truth[q.query_id]} for q in queries[8:]]
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return queries[:8], truth, gold


def make(gold: Path, rate: float = 0.25) -> Harness:
    service = RankService(
        rounds=10, committee_size=2, budget=100, budget_window=100, clock=FakeClock(),
        gold_rate=rate, gold_path=str(gold),
    )  # fmt: skip
    service.ranker.params["min_data_in_leaf"] = 3
    return Harness(service)


def test_gold_tasks_are_mixed_in_at_the_rate_scored_and_not_learned(stream_and_gold) -> None:
    queries, truth, gold = stream_and_gold
    h = make(gold)
    h.service.process(QUERIES, queries)
    assert h.service.queue.counts()["queued"] == 8 + 2  # one gold task per 4 queries
    assert h.annotate_all(truth, "good") == 10
    status = h.call("GET", "/labeling/status").body
    assert status["labeled_queries"] == 8  # the gold queries' grades never reach the model
    assert status["gold"] == {"good": {"gold_tasks": 2, "exact": 1.0, "ndcg@10": pytest.approx(1.0)}}
    assert status["queue"]["done"] == 10 and not h.service.gold_tasks


def test_an_annotator_who_grades_everything_zero_scores_low(stream_and_gold) -> None:
    queries, truth, gold = stream_and_gold
    h = make(gold, rate=1.0)  # a gold task after every query
    h.service.process(QUERIES, queries[:2])
    lazy = {q: dict.fromkeys(grades, 0) for q, grades in truth.items()}
    assert h.annotate_all(lazy, "lazy") == 4
    scores = h.call("GET", "/labeling/status").body["gold"]["lazy"]
    # the gold set is used in order: q8 then q9; "exact" is each task's share of true zeros, averaged
    shares = [sum(g == 0 for g in truth[q].values()) / len(truth[q]) for q in ("q8", "q9")]
    assert scores["gold_tasks"] == 2 and scores["exact"] == pytest.approx(sum(shares) / 2)
    assert scores["exact"] < 1.0


def test_gold_state_survives_a_checkpoint(stream_and_gold) -> None:
    queries, truth, gold = stream_and_gold
    h = make(gold)
    h.service.process(QUERIES, queries[:4])
    h.annotate_all(truth, "ann")
    assert h.service.gold_scores.summary()["ann"]["gold_tasks"] == 1
    restored = make(gold).service
    restored.load_state_dict(h.service.state_dict())
    assert restored.gold_scores.summary() == h.service.gold_scores.summary()
    assert restored.queries_seen == 4
    restored.process(QUERIES, queries[4:8])  # the second gold task comes after query 8, not 4 more
    assert len(restored.gold_tasks) == 1


def test_bad_gold_options_are_refused(tmp_path: Path, stream_and_gold) -> None:
    with pytest.raises(ValueError, match="gold_path"):
        RankService(gold_rate=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RankService(gold_rate=2.0, gold_path=str(stream_and_gold[2]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": {"query_id": "q", "ts": 0, "documents": []}, "grades": {}}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        RankService(gold_rate=0.1, gold_path=str(bad))

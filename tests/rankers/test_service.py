from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from models.checkpoints import CheckpointStore
from rankers.records import query_records
from rankers.service import RankService, build_service
from streams.schemas import Document, Label, LabelingTask, Query
from streams.service import ApiError

from .conftest import synthetic_queries
from .service_helpers import LABELS, QUERIES, QUEUE, FakeClock, Harness, labels_of

SMALL = {"rounds": 15, "committee_size": 3}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **options: object) -> Harness:
    settings = {**SMALL, "budget": 4, "budget_window": 4, "lease_s": 60.0, **options}
    service = RankService(clock=clock, **settings)  # type: ignore[arg-type]
    service.ranker.params["min_data_in_leaf"] = 3
    return Harness(service)


def one_leased_task(clock: FakeClock, queries: list[Query]) -> tuple[Harness, dict]:
    """A service with one queued query, its task leased to alice."""
    h = make(clock)
    h.service.process(QUERIES, queries[:1])
    return h, h.next_task("alice")


@pytest.fixture
def data() -> tuple[list[Query], dict[str, dict[str, int]]]:
    return query_records(synthetic_queries(16, docs=8))


def test_cold_start_queues_by_budget_and_produces_tasks(clock: FakeClock, data) -> None:
    queries, _ = data
    h = make(clock, budget=2, budget_window=5)
    result = h.service.process(QUERIES, queries[:5])
    tasks = [o.record for o in result.outputs]
    assert [o.topic for o in result.outputs] == [QUEUE, QUEUE]
    assert all(isinstance(t, LabelingTask) and t.selector == "cold-start" for t in tasks)
    assert [t.query_id for t in tasks] == ["q0", "q1"]
    assert h.service.queue.counts()["queued"] == 2
    more = h.service.process(QUERIES, queries[5:7])  # a new window of 5 queries starts at the 6th
    assert [o.record.query_id for o in more.outputs] == ["q5", "q6"]


def test_budget_per_seconds_uses_event_time(clock: FakeClock, data) -> None:
    queries, _ = data
    h = make(clock, budget=1, budget_per="seconds", budget_window=3600)
    times = [0, 10, 3599, 3600, 3700]
    stamped = [q.model_copy(update={"ts": ts}) for q, ts in zip(queries, times, strict=False)]
    result = h.service.process(QUERIES, stamped)
    assert [o.record.query_id for o in result.outputs] == ["q0", "q3"]


def test_leases_give_each_annotator_a_different_task_and_expire(clock: FakeClock, data) -> None:
    queries, _ = data
    h = make(clock)
    h.service.process(QUERIES, queries[:2])
    a, b = h.next_task("alice"), h.next_task("bob")
    assert a is not None and b is not None and a["task_id"] != b["task_id"]
    assert h.next_task("alice")["task_id"] == a["task_id"]  # same lease while it lasts
    assert h.next_task("carol") is None
    clock.now += 61
    carol = h.next_task("carol")
    assert carol is not None and carol["task_id"] in {a["task_id"], b["task_id"]}


def test_skip_requeues_for_others_only(clock: FakeClock, data) -> None:
    queries, _ = data
    h, task = one_leased_task(clock, queries)
    skipped = h.call("POST", "/labeling/{task}/skip", {"task": task["task_id"]}, body={"annotator": "alice"})
    assert skipped.body["requeued"] is True
    assert h.next_task("alice") is None
    assert h.next_task("bob")["task_id"] == task["task_id"]
    with pytest.raises(ApiError) as err:
        h.call("POST", "/labeling/{task}/skip", {"task": task["task_id"]}, body={"annotator": "alice"})
    assert err.value.status == 409


def test_submit_validates_then_emits_a_label_that_trains_on_return(clock: FakeClock, data) -> None:
    queries, truth = data
    h, task = one_leased_task(clock, queries)
    grades = truth[task["query_id"]]
    first_doc = next(iter(grades))

    def status_of(task_id: str, body_grades: object, annotator: str = "alice") -> int:
        try:
            return h.submit(task_id, body_grades, annotator).status  # type: ignore[arg-type]
        except ApiError as exc:
            return exc.status

    assert status_of("t-nope", grades) == 404
    assert status_of(task["task_id"], {**grades, "ghost": 1}) == 400
    assert status_of(task["task_id"], {k: v for k, v in grades.items() if k != first_doc}) == 400
    assert status_of(task["task_id"], {**grades, first_doc: 5}) == 400
    assert status_of(task["task_id"], {**grades, first_doc: 1.5}) == 400
    assert status_of(task["task_id"], {**grades, first_doc: True}) == 400
    assert status_of(task["task_id"], "all good") == 400
    assert status_of(task["task_id"], grades, annotator="mallory") == 409  # foreign lease
    assert labels_of(h.emitted) == []
    assert status_of(task["task_id"], grades) == 202
    assert status_of(task["task_id"], grades) == 409  # duplicate while the label travels
    [label] = labels_of(h.emitted)
    assert label.grades == grades and label.annotator == "alice" and label.task_id == task["task_id"]
    assert not h.service.ranker.fitted
    h.deliver_labels()
    assert h.service.ranker.fitted and h.service.model_version() == 1
    assert status_of(task["task_id"], grades) == 409  # already labeled
    assert h.service.queue.counts() == {"queued": 0, "leased": 0, "submitted": 0, "done": 1}


def test_expired_lease_cannot_submit(clock: FakeClock, data) -> None:
    queries, truth = data
    h, task = one_leased_task(clock, queries)
    clock.now += 61
    with pytest.raises(ApiError, match="lease expired") as err:
        h.submit(task["task_id"], truth[task["query_id"]], "alice")
    assert err.value.status == 409


def test_failed_emit_keeps_the_lease_so_the_annotator_can_retry(clock: FakeClock, data) -> None:
    queries, truth = data
    h, task = one_leased_task(clock, queries)
    h.fail_emit = True
    with pytest.raises(ApiError) as err:
        h.submit(task["task_id"], truth[task["query_id"]], "alice")
    assert err.value.status == 503
    h.fail_emit = False
    assert h.submit(task["task_id"], truth[task["query_id"]], "alice").status == 202


def test_labels_topic_holds_unknown_rejects_duplicate_and_mismatched(clock: FakeClock, data) -> None:
    queries, truth = data
    h = make(clock)
    h.service.process(QUERIES, queries[:2])
    tasks = {t.query_id: t for t in h.service.queue.entries.values() for t in [t.task]}
    good = Label(task_id=tasks["q0"].task_id, query_id="q0", ts=1, grades=truth["q0"])
    wrong_docs = Label(task_id=tasks["q1"].task_id, query_id="q1", ts=1, grades={"x": 1})
    unknown = Label(task_id="t-unknown", query_id="q9", ts=1, grades={"x": 1})
    result = h.service.process(LABELS, [good, wrong_docs, unknown, good])
    assert set(result.rejected) == {1, 3}
    assert "unknown documents" in result.rejected[1]
    assert "t-unknown" in h.service.held  # waits for a query that may create it (test_outcomes.py)
    assert "duplicate" in result.rejected[3]
    assert h.service.model_version() == 1
    again = h.service.process(LABELS, [good])
    assert "duplicate" in again.rejected[0]


def test_fitted_service_scores_queries_with_the_selector_and_threshold(clock: FakeClock, data) -> None:
    queries, truth = data
    h = make(clock, budget=100, budget_window=100, min_quantile=0.0)
    h.service.process(QUERIES, queries[:4])
    for _ in range(2):  # two retrains: a committee of two
        task = h.next_task("a")
        h.submit(task["task_id"], truth[task["query_id"]], "a")
        h.deliver_labels()
    result = h.service.process(QUERIES, queries[4:10])
    assert {o.record.selector for o in result.outputs} == {"re+pv"}
    assert len(result.outputs) == 6
    picky = make(clock, budget=100, budget_window=100, min_quantile=1.0)
    picky.service.load_state_dict(h.service.state_dict())
    some = picky.service.process(QUERIES, queries[10:16])
    assert len(some.outputs) < 6  # only a query topping every remembered score passes


def test_queries_with_wrong_width_or_replayed_are_rejected(clock: FakeClock, data) -> None:
    queries, truth = data
    h = make(clock)
    h.service.process(QUERIES, queries[:1])
    h.annotate_all(truth)
    narrow = Query(query_id="n", ts=0, documents=[Document(doc_id="a", features=[1.0])])
    result = h.service.process(QUERIES, [narrow, queries[0]])
    assert "features" in result.rejected[0] and "already has a task" in result.rejected[1]


def test_rank_route(clock: FakeClock, data) -> None:
    queries, truth = data
    h = make(clock, budget=8, budget_window=8)
    docs = [d.model_dump() for d in queries[15].documents]
    with pytest.raises(ApiError) as err:
        h.call("POST", "/rank", body={"documents": docs})
    assert err.value.status == 503
    h.service.process(QUERIES, queries[:8])
    h.annotate_all(truth)
    held, release, gave_up = threading.Event(), threading.Event(), threading.Event()

    def retrain_in_progress() -> None:
        with h.service.lock:
            held.set()
            if not release.wait(timeout=5):
                gave_up.set()

    holder = threading.Thread(target=retrain_in_progress)
    holder.start()
    held.wait(timeout=10)
    try:
        answer = h.call("POST", "/rank", body={"documents": docs}).body
        assert not gave_up.is_set(), "/rank waited for the service lock"
    finally:
        release.set()
        holder.join()
    scores = [r["score"] for r in answer["ranking"]]
    assert scores == sorted(scores, reverse=True) and answer["model_version"] == 1
    assert {r["doc_id"] for r in answer["ranking"]} == {d["doc_id"] for d in docs}
    for bad in ({"documents": []}, {"documents": [{"doc_id": "a"}]}, {"nope": 1}):
        with pytest.raises(ApiError) as err:
            h.call("POST", "/rank", body=bad)
        assert err.value.status == 400
    with pytest.raises(ApiError, match="features") as err:
        h.call("POST", "/rank", body={"documents": [{"doc_id": "a", "features": [1.0]}]})
    assert err.value.status == 400


def test_page_and_status(clock: FakeClock, data) -> None:
    h = make(clock)
    page = h.call("GET", "/labeling")
    assert page.content_type == "text/html" and 'id="submit"' in page.body and "/labeling/next" in page.body
    h.service.process(QUERIES, data[0][:3])
    status = h.call("GET", "/labeling/status").body
    assert status["queue"]["queued"] == 3 and status["budget"]["left"] == 1
    with pytest.raises(ApiError) as err:
        h.call("GET", "/labeling/next", query={})
    assert err.value.status == 400


def test_state_round_trip_through_a_checkpoint_loses_nothing(tmp_path: Path, clock: FakeClock, data) -> None:
    queries, truth = data
    h = make(clock, budget=6, budget_window=6, min_quantile=0.0)
    h.service.process(QUERIES, queries[:6])
    h.next_task("a")
    task = h.next_task("a")
    h.submit(task["task_id"], truth[task["query_id"]], "a")
    h.deliver_labels()
    leased = h.next_task("b")
    h.call("POST", "/labeling/{task}/skip", {"task": h.next_task("c")["task_id"]}, body={"annotator": "c"})
    store = CheckpointStore(tmp_path, "worker-rank")
    store.save({"service": h.service.state_dict()})

    restored = make(clock, budget=6, budget_window=6, min_quantile=0.0)
    restored.service.load_state_dict(store.load().state["service"])
    assert restored.service.queue.counts() == h.service.queue.counts()
    assert restored.next_task("b")["task_id"] == leased["task_id"]  # the lease survived
    assert restored.service.budget.state_dict() == h.service.budget.state_dict()
    assert restored.service.ranker.snapshot()[1] == h.service.model_version()
    more = [q.model_copy(update={"ts": 100.0 + i}) for i, q in enumerate(queries[6:9])]
    a, b = h.service.process(QUERIES, more), restored.service.process(QUERIES, more)
    assert [o.record for o in a.outputs] == [o.record for o in b.outputs]
    labeled = h.service.ranker.labeled
    assert np.array_equal(
        restored.service.ranker.committee_scores(labeled), h.service.ranker.committee_scores(labeled)
    )


def test_build_service_keeps_every_retrain_in_a_store(tmp_path: Path, data) -> None:
    queries, truth = data
    service = build_service(tmp_path, rounds=10, committee_size=2, budget=4, budget_window=4)
    service.ranker.params["min_data_in_leaf"] = 3
    h = Harness(service)
    service.process(QUERIES, queries[:2])
    h.annotate_all(truth)
    assert CheckpointStore(tmp_path, "lambdamart-committee").versions() == [1]
    with pytest.raises(ValueError, match="budget per"):
        build_service(tmp_path, budget_per="fortnight")

"""A deferring budget: undecided queries wait for a slot, where the current committee picks the best."""

from __future__ import annotations

import pytest

from rankers.budget import LabelingBudget
from rankers.deferral import CandidateBuffer
from rankers.lambdamart import LambdaMARTRanker
from rankers.records import query_batch, query_records
from rankers.selectors import PredictionVariance
from rankers.service import RankService, task_id_for
from streams.schemas import Document, Label, LabelingTask, Query

from .conftest import synthetic_queries
from .service_helpers import LABELS, QUERIES, QUEUE, FakeClock


def spread_query(name: str, spread: float, docs: int = 6) -> Query:
    """Documents along the first feature, ``spread`` apart: a larger spread, a larger score variance."""
    documents = [Document(doc_id=f"{name}-{j}", features=[spread * j, 0, 0, 0, 0]) for j in range(docs)]
    return Query(query_id=name, ts=0.0, documents=documents)


@pytest.fixture(scope="module")
def ranker() -> LambdaMARTRanker:
    """A committee of two that scores documents by their first feature (relevance follows it)."""
    model = LambdaMARTRanker(rounds=15, committee_size=2, params={"min_data_in_leaf": 3})
    data = synthetic_queries(24, docs=8)
    model.learn(data.select(range(12)))
    model.learn(data.select(range(12, 24)))
    return model


def test_the_buffer_keeps_the_newest_undecided_queries_once_each() -> None:
    buffer = CandidateBuffer(3)
    queries = [spread_query(f"q{i}", 1.0) for i in range(5)]
    for q in [*queries, queries[4]]:
        buffer.add(q.query_id, q)
    assert list(buffer.waiting) == ["q2", "q3", "q4"]  # q0, q1 passed over; q4 waits once
    assert buffer.newest() == "q4"
    assert buffer.take("q3") is queries[3] and "q3" not in buffer and len(buffer) == 2


def test_best_is_the_selectors_best_under_the_current_committee(ranker: LambdaMARTRanker) -> None:
    buffer = CandidateBuffer(4)
    for name, spread in (("flat", 0.01), ("wide", 2.0), ("mid", 0.5)):
        buffer.add(name, spread_query(name, spread))
    picked = buffer.best(ranker, PredictionVariance(), first=set())
    assert picked is not None
    key, score = picked
    expected = [PredictionVariance().score([ranker.committee_scores(query_batch([buffer.waiting[k]]))])[0]
                for k in ("flat", "wide", "mid")]  # fmt: skip
    assert len(set(expected)) == 3  # the three queries are told apart
    assert key == ("flat", "wide", "mid")[expected.index(max(expected))]
    assert score == pytest.approx(max(expected))
    assert buffer.best(ranker, PredictionVariance(), first={"flat"}) == ("flat", 0.0)  # its labels exist


def test_queries_the_model_cannot_score_are_passed_over(ranker: LambdaMARTRanker) -> None:
    buffer = CandidateBuffer(4)
    narrow = Query(query_id="narrow", ts=0.0, documents=[Document(doc_id="n0", features=[1.0, 2.0])])
    buffer.add("narrow", narrow)  # taken in before the first model fixed the feature count at 5
    assert buffer.best(ranker, PredictionVariance(), first=set()) is None and len(buffer) == 0
    buffer.add("narrow", narrow)
    buffer.add("wide", spread_query("wide", 2.0))
    picked = buffer.best(ranker, PredictionVariance(), first=set())
    assert picked is not None and picked[0] == "wide" and list(buffer.waiting) == ["wide"]


def test_cached_scores_are_refreshed_when_the_committee_changes() -> None:
    model = LambdaMARTRanker(rounds=10, committee_size=2, params={"min_data_in_leaf": 3})
    data = synthetic_queries(24, docs=8)
    model.learn(data.select(range(12)))
    buffer = CandidateBuffer(2)
    buffer.add("wide", spread_query("wide", 2.0))
    before = buffer.best(model, PredictionVariance(), first=set())
    model.learn(data.select(range(12, 24)))
    after = buffer.best(model, PredictionVariance(), first=set())
    assert before is not None and after is not None
    fresh = PredictionVariance().score([model.committee_scores(query_batch([buffer.waiting["wide"]]))])[0]
    assert after[1] == pytest.approx(fresh) and after[1] != pytest.approx(before[1])


def test_a_deferring_budget_must_be_paced_and_carries_its_waiting_queries() -> None:
    with pytest.raises(ValueError, match="paced"):
        LabelingBudget(5, 10, defer=3)
    for bad in (-1, "20", 2.5):
        with pytest.raises(ValueError, match="defer must be an integer"):
            LabelingBudget(5, 10, pace=True, defer=bad)  # type: ignore[arg-type]
    budget = LabelingBudget(5, 10, pace=True, defer=3)
    assert budget.candidates is not None
    budget.candidates.add("q1", spread_query("q1", 1.0))
    copy = LabelingBudget(5, 10, pace=True, defer=3)
    copy.load_state_dict(budget.state_dict())
    assert copy.candidates is not None and copy.candidates.waiting == budget.candidates.waiting


def deferring_service(**options: object) -> RankService:
    settings = {"rounds": 15, "committee_size": 2, "budget": 1, "budget_window": 4, "budget_pace": True,
                "budget_defer": 4, "selector": "pv", "clock": FakeClock(), **options}  # fmt: skip
    service = RankService(**settings)  # type: ignore[arg-type]
    service.ranker.params["min_data_in_leaf"] = 3
    return service


def learn_some(service: RankService) -> None:
    """Give the service a model: tasks for a few queries, truthfully labeled."""
    queries, truth = query_records(synthetic_queries(12, docs=8, seed=3))
    budget = service.budget
    service.budget = LabelingBudget(12, 12)  # the warm-up's own budget, so the test's windows start clean
    result = service.process(QUERIES, queries)
    tasks = [o.record for o in result.outputs if isinstance(o.record, LabelingTask)]
    labels = [Label(task_id=t.task_id, query_id=t.query_id, ts=t.ts, grades=truth[t.query_id], annotator="a")
              for t in tasks]  # fmt: skip
    assert not service.process(LABELS, labels).rejected and service.ranker.fitted
    service.budget = budget


def test_each_slot_goes_to_the_best_waiting_query_not_the_one_arriving() -> None:
    service = deferring_service()
    learn_some(service)
    stream = [spread_query("wide", 2.0), spread_query("flat1", 0.01), spread_query("flat2", 0.01),
              spread_query("flat3", 0.01)]  # fmt: skip
    result = service.process(QUERIES, stream)
    tasks = [o.record for o in result.outputs if o.topic == QUEUE]
    # the window's one slot opens with its first query (ceil(1 * 1 / 4)) and "wide" is best then
    assert [t.query_id for t in tasks] == ["wide"] and tasks[0].selector == "pv"
    late = [spread_query("flat4", 0.01), wide2 := spread_query("wide2", 2.0)]
    second = service.process(QUERIES, late)  # a new window: its slot opens when only flats wait
    assert [o.record.query_id for o in second.outputs] == ["flat1"]  # equal scores: the oldest
    assert service.budget.candidates is not None and task_id_for(wide2) in service.budget.candidates


def test_a_threshold_service_takes_the_arriving_query_whatever_comes_next() -> None:
    service = deferring_service(budget_defer=0, min_quantile=0.0)
    learn_some(service)
    result = service.process(QUERIES, [spread_query("flat1", 0.01), spread_query("wide", 2.0)])
    assert [o.record.query_id for o in result.outputs] == ["flat1"]  # decided alone, at once


def test_the_best_of_the_buffer_wins_once_several_queries_wait() -> None:
    service = deferring_service(budget=2, budget_window=8)
    learn_some(service)
    # slots at the 1st and 5th query of the window: the 5th finds flat2..flat4 and wide waiting
    stream = [spread_query("flat1", 0.01), spread_query("flat2", 0.01), spread_query("wide", 2.0),
              spread_query("flat3", 0.01), spread_query("flat4", 0.01)]  # fmt: skip
    result = service.process(QUERIES, stream)
    assert [o.record.query_id for o in result.outputs] == ["flat1", "wide"]


def test_cold_start_tasks_caps_unselected_tasks_and_the_rest_wait_for_the_model() -> None:
    service = deferring_service(budget=4, budget_window=8, cold_start_tasks=1)
    queries, truth = query_records(synthetic_queries(8, docs=8, seed=4))
    first = service.process(QUERIES, queries[:6])
    tasks = [o.record for o in first.outputs if o.topic == QUEUE]
    assert [t.selector for t in tasks] == ["cold-start"]  # the paced budget would allow 3
    assert service.budget.candidates is not None and len(service.budget.candidates) == 4  # q1.. wait
    label = Label(task_id=tasks[0].task_id, query_id=tasks[0].query_id, ts=tasks[0].ts,
                  grades=truth[tasks[0].query_id], annotator="a")  # fmt: skip
    assert not service.process(LABELS, [label]).rejected
    later = service.process(QUERIES, queries[6:7])
    picked = [o.record for o in later.outputs if o.topic == QUEUE]
    # the model exists: the window's unspent allowance (ceil(4 * 7 / 8) - 1 = 3) goes to waiting queries
    assert len(picked) == 3 and {t.selector for t in picked} == {"pv"}


def test_a_threshold_service_passes_over_queries_beyond_the_cold_start_cap() -> None:
    service = deferring_service(budget_defer=0, budget=4, budget_window=8, cold_start_tasks=2)
    queries, _ = query_records(synthetic_queries(8, docs=8, seed=4))
    result = service.process(QUERIES, queries)
    assert [o.record.query_id for o in result.outputs] == ["q0", "q2"]  # paced: a slot per 2 queries
    for bad in (-1, "10"):
        with pytest.raises(ValueError, match="cold_start_tasks"):
            deferring_service(cold_start_tasks=bad)


def test_a_label_held_for_a_waiting_query_is_learned_when_its_task_is_made() -> None:
    service = deferring_service(budget=1, budget_window=3)
    learn_some(service)
    waiting = spread_query("flat", 0.01)
    grades = {d.doc_id: 0 for d in waiting.documents}
    # the window's slot goes to "wide"; "flat" waits
    service.process(QUERIES, [spread_query("wide", 2.0), waiting])
    assert service.budget.candidates is not None and task_id_for(waiting) in service.budget.candidates
    # a replay after a crash meets flat's label (its task was made before the crash) before the task
    label = Label(task_id=task_id_for(waiting), query_id="flat", ts=0.0, grades=grades, annotator="a")
    assert not service.process(LABELS, [label]).rejected and task_id_for(waiting) in service.held
    updates = service.ranker.n_updates
    result = service.process(QUERIES, [spread_query("wide2", 2.0), spread_query("x", 1.0)])
    assert [o.record.query_id for o in result.outputs if o.topic == QUEUE] == ["flat"]  # labels exist
    assert task_id_for(waiting) not in service.held and service.ranker.n_updates == updates + 1
    assert not any(o.topic.endswith("dead-letter") for o in result.outputs)

"""Leases and skips are outcomes on the control topic: exclusive under concurrency, sent before the
answer, and replayed to the same queue state however often they arrive."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from models.checkpoints import CheckpointStore
from rankers.labeling_queue import Entry
from rankers.records import query_records
from rankers.service import RankService, task_id_for
from streams.schemas import DeadLetter, Label, Outcome, Query
from streams.service import ApiError, ApiRequest, Output
from streams.topics import topic_name

from .conftest import synthetic_queries
from .service_helpers import CONTROL, LABELS, QUERIES, QUEUE, FakeClock, Harness, labels_of, outcomes_of

ANNOTATORS = 20
TASKS = 12
DEAD_LETTER = topic_name("dead-letter")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fresh_service(clock: FakeClock, n: int, **options: Any) -> RankService:
    """A cold-start service whose budget makes a task of each of its first ``n`` queries."""
    return RankService(
        clock=clock, rounds=5, committee_size=2, budget=n, budget_window=n, lease_s=60.0, **options
    )


def service_with_tasks(clock: FakeClock, queries: list[Query]) -> RankService:
    """A cold-start service that queued one task per query."""
    service = fresh_service(clock, len(queries))
    assert len(service.process(QUERIES, queries).outputs) == len(queries)
    return service


def make(clock: FakeClock, tasks: int = 4) -> tuple[Harness, list[Query]]:
    """A harnessed service with ``tasks`` queued tasks (synthetic queries) and those queries."""
    queries, _ = query_records(synthetic_queries(tasks, docs=4))
    return Harness(service_with_tasks(clock, queries)), queries


def skip(h: Harness, task_id: str, annotator: str) -> int:
    try:
        return h.call(
            "POST", "/labeling/{task}/skip", {"task": task_id}, body={"annotator": annotator}
        ).status
    except ApiError as exc:
        return exc.status


def next_status(h: Harness, annotator: str) -> int:
    try:
        return h.call("GET", "/labeling/next", query={"annotator": annotator}).status
    except ApiError as exc:
        return exc.status


def leases_and_skips(h: Harness, clock: FakeClock) -> None:
    """A history touching every kind of change: leases, a held lease, skips, an expiry, a re-lease."""
    a = h.next_task("alice")["task_id"]
    assert h.next_task("alice")["task_id"] == a
    b = h.next_task("bob")["task_id"]
    assert skip(h, a, "alice") == 200
    assert h.next_task("carol")["task_id"] == a
    clock.now += 61  # bob's and carol's leases expire: no outcome, a function of the clock
    assert h.next_task("dave")["task_id"] in {a, b}
    h.next_task("alice")


# -- exclusivity under concurrency ------------------------------------------------------------------
async def lease_concurrently(h: Harness, annotators: list[str]) -> dict[str, dict[str, Any] | None]:
    """Every annotator calls the real ``GET /labeling/next`` handler at once, each in its own task."""
    handler = h.routes[("GET", "/labeling/next")]
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=len(annotators)))
    calls = [asyncio.create_task(handler(ApiRequest("GET", {}, {"annotator": name}))) for name in annotators]
    answers = await asyncio.gather(*calls)
    return {name: answer.body["task"] for name, answer in zip(annotators, answers, strict=True)}


def test_concurrent_annotators_never_share_a_task(clock: FakeClock, monkeypatch) -> None:
    h, _ = make(clock, tasks=TASKS)
    choose = h.service.queue.best_for

    def slow_choice(annotator: str) -> Entry | None:
        entry = choose(annotator)
        time.sleep(0.002)  # widen the gap between choosing and leasing: a missing lock shows every time
        return entry

    monkeypatch.setattr(h.service.queue, "best_for", slow_choice)
    names = [f"annotator-{i}" for i in range(ANNOTATORS)]
    got = asyncio.run(lease_concurrently(h, names))

    leased = {name: task["task_id"] for name, task in got.items() if task is not None}
    shared = {task: n for task, n in Counter(leased.values()).items() if n > 1}
    assert not shared, f"tasks leased to two annotators at once: {shared}"
    assert set(leased.values()) == set(h.service.queue.entries)  # every task leased exactly once
    assert len(leased) == TASKS and sum(task is None for task in got.values()) == ANNOTATORS - TASKS
    holders = {tid: e.annotator for tid, e in h.service.queue.entries.items()}
    assert holders == {task: name for name, task in leased.items()}
    sent = outcomes_of(h.emitted)
    assert sorted((o.key, o.data["annotator"]) for o in sent) == sorted((t, n) for n, t in leased.items())
    assert {o.kind for o in sent} == {"lease"} and {o.seq for o in sent} == {1}


# -- replay -----------------------------------------------------------------------------------------
def test_replaying_the_control_topic_twice_gives_the_same_queue(clock: FakeClock) -> None:
    h, queries = make(clock)
    replica = service_with_tasks(clock, queries)  # queued at the same time as h's tasks
    leases_and_skips(h, clock)
    sent = outcomes_of(h.emitted)
    assert Counter(o.kind for o in sent) == {"lease": 5, "skip": 1}
    assert {o.key: o.seq for o in sent} == h.service.outcome_seqs

    first = replica.process(CONTROL, list(sent))
    assert not first.rejected and first.metrics["outcomes_applied"] == len(sent)
    assert replica.queue.state_dict() == h.service.queue.state_dict()
    again = replica.process(CONTROL, list(sent) + list(sent))
    assert not again.rejected and again.metrics["outcomes_applied"] == 0
    assert replica.queue.state_dict() == h.service.queue.state_dict()
    assert h.service.process(CONTROL, list(sent)).metrics["outcomes_applied"] == 0  # its own come back


def test_leases_and_skips_survive_a_checkpoint_and_replay(clock: FakeClock) -> None:
    h, queries = make(clock)
    alice = h.next_task("alice")["task_id"]
    saved, saved_seqs = h.service.state_dict(), dict(h.service.outcome_seqs)  # what the runner keeps
    bob = h.next_task("bob")["task_id"]
    assert skip(h, alice, "alice") == 200
    carol = h.next_task("carol")
    assert carol["task_id"] == alice  # the task alice skipped
    sent = outcomes_of(h.emitted)

    restored = Harness(service_with_tasks(clock, queries))
    restored.service.load_state_dict(saved)
    restored.service.outcome_seqs = saved_seqs
    restored.service.process(CONTROL, sent)  # the consumer replays from before the checkpoint
    assert restored.service.queue.state_dict() == h.service.queue.state_dict()
    assert restored.next_task("bob")["task_id"] == bob and restored.next_task("carol") == carol
    assert restored.next_task("alice")["task_id"] not in {alice, bob}  # her skip held
    assert outcomes_of(restored.emitted)[-1].seq == 1  # a task never leased before starts at seq 1
    assert skip(restored, alice, "carol") == 200
    assert outcomes_of(restored.emitted)[-1].seq == 4  # lease alice, skip alice, lease carol, then this


def test_expiry_follows_the_recorded_time_and_writes_nothing(clock: FakeClock) -> None:
    h, _ = make(clock, tasks=1)
    view = h.call("GET", "/labeling/next", query={"annotator": "alice"}).body
    [lease] = outcomes_of(h.emitted)
    assert view["lease_expires"] == lease.data["expires_at"] == clock.now + 60.0
    before = h.service.queue.state_dict()
    clock.now = lease.data["expires_at"]
    assert h.service.queue.counts()["queued"] == 1 and h.service.queue.state_dict() == before
    with pytest.raises(ApiError, match="your lease expired"):
        h.submit(lease.key, {}, "alice")
    assert h.next_task("bob")["task_id"] == lease.key


# -- the answer waits for Kafka -----------------------------------------------------------------------
def test_the_lease_answer_waits_until_the_outcome_is_sent(clock: FakeClock) -> None:
    h, _ = make(clock, tasks=1)
    handler = h.routes[("GET", "/labeling/next")]
    sent: list[Output] = []

    async def scenario() -> None:
        broker_has_it = asyncio.Event()

        async def slow_emit(output: Output) -> None:
            await broker_has_it.wait()
            sent.append(output)

        h.service.emit = slow_emit
        answer = asyncio.create_task(handler(ApiRequest("GET", {}, {"annotator": "alice"})))
        await asyncio.sleep(0.2)  # the lease is decided (in a thread) and the send is pending
        assert not answer.done(), "answered before the broker had the lease"
        broker_has_it.set()
        assert (await answer).body["task"]["task_id"] == sent[0].record.key

    asyncio.run(scenario())


def test_failed_send_answers_503_and_the_retry_records_the_same_lease(clock: FakeClock) -> None:
    h, queries = make(clock, tasks=1)
    h.fail_emit = True
    with pytest.raises(ApiError, match="change not recorded") as err:
        h.next_task("alice")
    assert err.value.status == 503 and h.emitted == []
    # the lease stands here, unsent: nobody else gets the task, and alice's retry sends it first
    assert h.service.queue.counts()["leased"] == 1 and h.next_task("bob") is None
    h.fail_emit = False
    task = h.next_task("alice")
    [lease] = outcomes_of(h.emitted)
    assert (lease.kind, lease.key, lease.seq, lease.data["annotator"]) == (
        "lease",
        task["task_id"],
        1,
        "alice",
    )
    replica = service_with_tasks(clock, queries)
    replica.process(CONTROL, [lease])
    assert replica.queue.state_dict() == h.service.queue.state_dict()
    h.next_task("alice")
    assert len(h.emitted) == 1  # once sent, a held lease is not sent again


def test_failed_skip_answers_503_and_the_retry_records_it(clock: FakeClock) -> None:
    h, queries = make(clock, tasks=1)
    task_id = h.next_task("alice")["task_id"]
    h.fail_emit = True
    assert skip(h, task_id, "alice") == 503
    assert h.next_task("alice") is None  # the skip stands here (unsent)
    h.fail_emit = False
    assert skip(h, task_id, "alice") == 200  # the retry sends the unsent skip
    assert skip(h, task_id, "alice") == 409  # and once sent, it is not a skip to retry any more
    assert [(o.kind, o.seq) for o in outcomes_of(h.emitted)] == [("lease", 1), ("skip", 2)]
    h.fail_emit = True
    assert next_status(h, "bob") == 503  # bob's lease is unsent...
    h.fail_emit = False
    replica = service_with_tasks(clock, queries)
    replica.process(CONTROL, outcomes_of(h.emitted))
    assert replica.queue.entries[task_id].skipped_by == {"alice"}
    assert h.next_task("bob")["task_id"] == task_id  # ...until his retry sends it
    assert [(o.kind, o.seq) for o in outcomes_of(h.emitted)][-1] == ("lease", 3)


def test_a_lease_without_a_producer_is_refused(clock: FakeClock) -> None:
    h, _ = make(clock, tasks=1)
    h.service.emit = None
    with pytest.raises(ApiError, match="no producer") as err:
        h.next_task("alice")
    assert err.value.status == 503


# -- what the control topic may carry ------------------------------------------------------------------
def test_control_records_other_services_pass_bad_outcomes_are_rejected(clock: FakeClock) -> None:
    h, _ = make(clock, tasks=1)
    [task_id] = h.service.queue.entries
    before = h.service.queue.state_dict()

    def outcome(kind: str, key: str = task_id, service: str = "rank", **data: Any) -> Outcome:
        return Outcome(service=service, kind=kind, key=key, seq=1, ts=0.0, data=data)

    batch = [
        outcome("lease", service="ctr", annotator="x", expires_at=9e9),
        outcome("lease", key="t-unknown", annotator="x", expires_at=9e9),
        outcome("rollback", annotator="x"),
        outcome("lease", annotator="x", expires_at="soon"),
        outcome("lease", annotator="", expires_at=9e9),
        outcome("lease", key="t-unknown", annotator="x", expires_at="soon"),
    ]
    result = h.service.process(CONTROL, batch)
    assert set(result.rejected) == {2, 3, 4, 5}
    assert "no 'rollback' outcomes" in result.rejected[2]
    assert "expires_at" in result.rejected[3] and "annotator" in result.rejected[4]
    assert "expires_at" in result.rejected[5]  # a bad outcome is refused at once, task or no task
    assert len(h.service.held) == 1 and "t-unknown" in h.service.held  # it may still get its task
    assert h.service.queue.state_dict() == before and h.service.outcome_seqs == {}


# -- labels and outcomes that a replay delivers before their query ------------------------------------
def answered_history(clock: FakeClock) -> tuple[Harness, list[Query], list[Outcome], list[Label]]:
    """Task A leased by alice, skipped, leased by bob; task B leased by carol and labeled by her."""
    queries, truth = query_records(synthetic_queries(2, docs=8))
    h = Harness(service_with_tasks(clock, queries))
    a = h.next_task("alice")["task_id"]
    assert skip(h, a, "alice") == 200
    assert h.next_task("bob")["task_id"] == a
    b = h.next_task("carol")
    assert b["task_id"] != a
    assert h.submit(b["task_id"], truth[b["query_id"]], "carol").status == 202
    labels = labels_of(h.emitted)
    h.deliver_labels()
    assert h.service.model_version() == 1
    return h, queries, outcomes_of(h.emitted), labels


def dead_letters(outputs: list[Output]) -> list[DeadLetter]:
    return [o.record for o in outputs if isinstance(o.record, DeadLetter) and o.topic == DEAD_LETTER]


@pytest.mark.parametrize("checkpointed", [False, True], ids=["in-memory", "through-a-checkpoint"])
def test_labels_and_outcomes_before_their_query_wait_for_it(
    clock: FakeClock, tmp_path: Path, checkpointed: bool
) -> None:
    h, queries, outcomes, labels = answered_history(clock)
    replica = fresh_service(clock, len(queries))
    early = [replica.process(LABELS, labels), replica.process(CONTROL, outcomes)]  # label first
    assert [r.rejected for r in early] == [{}, {}] and not any(r.outputs for r in early)
    assert len(replica.held) == len(outcomes) + 1 and replica.queue.entries == {}
    if checkpointed:  # the hold-back is service state: a crash now loses none of it
        store = CheckpointStore(tmp_path, "worker-rank")
        store.save({"service": replica.state_dict()})
        replica = fresh_service(clock, len(queries))
        replica.load_state_dict(store.load().state["service"])
        assert len(replica.held) == len(outcomes) + 1

    result = replica.process(QUERIES, queries)
    assert not result.rejected and [o.topic for o in result.outputs] == [QUEUE, QUEUE]  # no dead letter
    assert result.metrics["held_outcomes_applied"] == len(outcomes)
    assert result.metrics["held_labels_released"] == 1
    # in order: A's skip between its two leases, B's lease before its label (else B's lease is refused)
    assert replica.queue.state_dict() == h.service.queue.state_dict()
    assert replica.outcome_seqs == h.service.outcome_seqs
    assert replica.model_version() == h.service.model_version() == 1 and len(replica.held) == 0

    again = [replica.process(CONTROL, outcomes), replica.process(LABELS, labels)]  # a second replay
    assert again[0].metrics["outcomes_applied"] == 0 and not again[0].rejected
    assert list(again[1].rejected.values()) == [f"duplicate label for task {labels[0].task_id}"]
    assert replica.queue.state_dict() == h.service.queue.state_dict() and len(replica.held) == 0


def test_a_full_hold_back_dead_letters_what_does_not_fit(clock: FakeClock) -> None:
    _, queries, outcomes, labels = answered_history(clock)
    replica = fresh_service(clock, len(queries), pending_max=2)
    control = replica.process(CONTROL, outcomes)
    assert sorted(control.rejected) == [2, 3] and len(replica.held) == 2
    for index, reason in control.rejected.items():
        outcome = outcomes[index]
        assert reason.startswith(f"lease outcome #{outcome.seq} for {outcome.key}: no task {outcome.key} yet")
        assert "hold-back full (2 records wait for their tasks; pending_max)" in reason
    [reason] = replica.process(LABELS, labels).rejected.values()
    assert reason.startswith(f"label for unknown task {labels[0].task_id}: hold-back full")


def test_a_record_held_past_its_ttl_is_dead_lettered(clock: FakeClock) -> None:
    _, queries, outcomes, labels = answered_history(clock)
    replica = fresh_service(clock, len(queries))
    assert replica.held.ttl_s == 3 * replica.queue.lease_s  # a few lease lengths by default
    replica.process(LABELS, labels)
    clock.now += 100
    replica.process(CONTROL, outcomes)
    clock.now += 81  # the label has waited 181 s (past 180), the outcomes 81 s
    result = replica.process(QUERIES, queries)
    [letter] = dead_letters(result.outputs)
    assert (letter.topic, letter.partition, letter.offset) == (LABELS, -1, -1)
    assert Label.model_validate_json(letter.payload) == labels[0]
    assert letter.reason.startswith(f"held back 181 s for task {labels[0].task_id}, past pending_ttl_s=180")
    assert replica.queue.entries[labels[0].task_id].annotator == "carol"  # its outcomes still applied
    assert replica.model_version() == 0 and len(replica.held) == 0


def test_records_for_a_query_that_made_no_task_are_dead_lettered(clock: FakeClock) -> None:
    queries, truth = query_records(synthetic_queries(2, docs=4))
    service = RankService(clock=clock, rounds=5, budget=1, budget_window=2, lease_s=60.0)
    orphan = task_id_for(queries[1])  # the budget runs out before this query: it never becomes a task
    label = Label(task_id=orphan, query_id=queries[1].query_id, ts=clock.now, grades=truth["q1"])
    lease = Outcome(service="rank", kind="lease", key=orphan, seq=1, ts=0.0,
                    data={"annotator": "x", "expires_at": 9e9})  # fmt: skip
    assert not service.process(LABELS, [label]).rejected and not service.process(CONTROL, [lease]).rejected
    result = service.process(QUERIES, queries)
    assert [o.topic for o in result.outputs] == [QUEUE, DEAD_LETTER, DEAD_LETTER]
    letters = dead_letters(result.outputs)
    assert [d.topic for d in letters] == [LABELS, CONTROL]  # arrival order
    assert {d.reason for d in letters} == {f"query q1 at ts {queries[1].ts} did not become a labeling task"}
    assert len(service.held) == 0 and service.outcome_seqs == {} and not service.queue.knows(orphan)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"pending_max": -1}, "pending_max"), ({"pending_max": "lots"}, "pending_max"),
     ({"pending_ttl_s": 0}, "pending_ttl_s"), ({"pending_ttl_s": "soon"}, "pending_ttl_s")],
)  # fmt: skip
def test_bad_hold_back_bounds_are_refused(clock: FakeClock, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fresh_service(clock, 1, **options)

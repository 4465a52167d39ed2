"""Leases and skips are outcomes on the control topic: exclusive under concurrency, sent before the
answer, and replayed to the same queue state however often they arrive."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rankers.labeling_queue import Entry
from rankers.records import query_records
from rankers.service import RankService
from streams.schemas import Outcome, Query
from streams.service import ApiError, ApiRequest, Output

from .conftest import synthetic_queries
from .service_helpers import CONTROL, QUERIES, FakeClock, Harness, outcomes_of

ANNOTATORS = 20
TASKS = 12


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def service_with_tasks(clock: FakeClock, queries: list[Query]) -> RankService:
    """A cold-start service that queued one task per query."""
    n = len(queries)
    service = RankService(clock=clock, rounds=5, committee_size=2, budget=n, budget_window=n, lease_s=60.0)
    assert len(service.process(QUERIES, queries).outputs) == n
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
    ]
    result = h.service.process(CONTROL, batch)
    assert set(result.rejected) == {1, 2, 3, 4}
    assert "no task t-unknown" in result.rejected[1]
    assert "no 'rollback' outcomes" in result.rejected[2]
    assert "expires_at" in result.rejected[3] and "annotator" in result.rejected[4]
    assert h.service.queue.state_dict() == before and h.service.outcome_seqs == {}

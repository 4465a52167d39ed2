"""End to end on the real broker: queries -> tasks -> annotator over HTTP -> labels topic -> retrain,
including a worker killed right after it accepted a label."""

from __future__ import annotations

import pytest

from rankers.records import query_records
from streams.producer import make_producer, send_all
from streams.tokens import Role
from streams.topics import topic_name
from tests.streams.helpers import get_json, post_json, read_topic, wait_until

from .conftest import synthetic_queries

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OPTIONS = ["rank.budget=3", "rank.budget_window=3", "rank.rounds=10", "rank.lease_s=30"]


def status(worker) -> dict:
    code, body = get_json(f"{worker.base}/labeling/status")
    assert code == 200, body
    return body


def submit(worker, task: dict, truth: dict, token: str) -> tuple[int, dict]:
    """Labels carry the name of the annotator's token."""
    return post_json(
        f"{worker.base}/labeling/{task['task_id']}", {"grades": truth[task["query_id"]]}, token=token
    )


def grade_next(worker, truth: dict, token: str) -> dict:
    code, view = get_json(f"{worker.base}/labeling/next", token=token)
    assert code == 200 and view["task"] is not None, view
    code, body = submit(worker, view["task"], truth, token)
    assert code == 202, body
    return view["task"]


def test_labels_flow_through_kafka_and_survive_a_crash(kafka, worker_factory, minted_tokens) -> None:
    alice, bob = (minted_tokens.mint(name, Role.ANNOTATOR) for name in ("alice", "bob"))
    queries, truth = query_records(synthetic_queries(3, docs=30))
    worker = worker_factory("rank", OPTIONS).start()
    producer = make_producer(kafka.bootstrap)
    try:
        send_all(producer, "queries", queries, progress=False)
    finally:
        producer.close()
    wait_until(lambda: status(worker)["queue"]["queued"] == 3, what="3 labeling tasks queued")
    tasks = read_topic(kafka.bootstrap, topic_name("labeling-queue"), 3)
    assert sorted(t["query_id"] for t in tasks) == ["q0", "q1", "q2"]

    first = grade_next(worker, truth, alice)
    wait_until(lambda: status(worker)["model_version"] == 1, what="retrain from the first label")
    code, body = submit(worker, first, truth, alice)
    assert code == 409 and "already labeled" in body["error"]

    grade_next(worker, truth, bob)
    worker.kill()  # the label is in Kafka, the worker never learned it
    worker.start()  # replays every topic from its checkpoint: labels may come before their queries
    wait_until(lambda: status(worker)["queue"]["done"] == 2, what="both labels learned after the crash")
    after = status(worker)
    assert after["labeled_queries"] == 2 and after["held_back"] == 0 and after["queue"]["queued"] == 1
    assert len(read_topic(kafka.bootstrap, topic_name("labels"), 2)) == 2
    # nothing lost: a lease replayed after its task's label is moot, every other record applied
    dead = read_topic(kafka.bootstrap, topic_name("dead-letter"), 10, timeout_s=5)
    assert all(d["topic"] == topic_name("control") and "already labeled" in d["reason"] for d in dead), dead

    docs = [d.model_dump() for d in queries[2].documents]
    code, body = post_json(f"{worker.base}/rank", {"documents": docs})
    # the replay retrains once per micro-batch of labels, so the version counts how Kafka batched it
    assert code == 200 and len(body["ranking"]) == 30 and body["model_version"] == after["model_version"] >= 1


def test_an_answered_lease_is_on_the_control_topic_and_survives_a_crash(
    kafka, worker_factory, minted_tokens
) -> None:
    alice_token, bob_token = (minted_tokens.mint(name, Role.ANNOTATOR) for name in ("alice", "bob"))
    queries, _ = query_records(synthetic_queries(2, docs=5))
    worker = worker_factory("rank", ["rank.budget=2", "rank.budget_window=2", "rank.lease_s=600"]).start()
    producer = make_producer(kafka.bootstrap)
    try:
        send_all(producer, "queries", queries, progress=False)
    finally:
        producer.close()
    wait_until(lambda: status(worker)["queue"]["queued"] == 2, what="2 labeling tasks queued")

    code, alice = get_json(f"{worker.base}/labeling/next", token=alice_token)
    assert code == 200 and alice["task"] is not None, alice
    [lease] = read_topic(kafka.bootstrap, topic_name("control"), 1)
    assert (lease["service"], lease["kind"], lease["key"], lease["seq"]) == (
        "rank",
        "lease",
        alice["task"]["task_id"],
        1,
    )
    assert lease["data"] == {"annotator": "alice", "expires_at": alice["lease_expires"]}

    worker.kill()  # SIGKILL: whatever was only in memory is gone
    worker.start()
    wait_until(lambda: status(worker)["queue"]["leased"] == 1, what="alice's lease back after the restart")
    code, again = get_json(f"{worker.base}/labeling/next", token=alice_token)
    assert code == 200 and again == alice  # the same task, the same absolute expiry
    code, bob = get_json(f"{worker.base}/labeling/next", token=bob_token)
    assert code == 200 and bob["task"]["task_id"] != alice["task"]["task_id"]
    assert status(worker)["queue"]["leased"] == 2
    sent = read_topic(kafka.bootstrap, topic_name("control"), 3, timeout_s=5)
    leases = {(alice["task"]["task_id"], "alice"), (bob["task"]["task_id"], "bob")}
    assert sorted((o["key"], o["data"]["annotator"]) for o in sent) == sorted(leases)  # none sent twice

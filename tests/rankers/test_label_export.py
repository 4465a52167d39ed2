"""``driftline labels export``: every accepted label from the labels topic, with the rank service's
refusals from the dead-letter topic; end to end through a real worker and broker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from rankers.label_export import export_rows, refusals, write_jsonl
from rankers.records import query_records
from streams.schemas import DeadLetter, Label
from streams.topics import topic_name

from .conftest import synthetic_queries

LABELS = "driftline.labels"


@dataclass
class Msg:
    partition: int
    offset: int
    value: bytes | None


def label(task: str, annotator: str, version: int | None = 3) -> bytes:
    record = Label(task_id=task, query_id=f"q-{task}", ts=1_764_000_000.5, grades={"d0": 2, "d1": 4},
                   annotator=annotator, model_version=version)  # fmt: skip
    return record.to_bytes()


def letter(topic: str, partition: int, offset: int, reason: str) -> Msg:
    record = DeadLetter(topic=topic, partition=partition, offset=offset, reason=reason, payload="{}", ts=1.0)
    return Msg(0, 0, record.to_bytes())


def test_rows_carry_annotator_task_time_version_and_any_refusal() -> None:
    refused = refusals(
        [
            letter(LABELS, 1, 7, "duplicate label for task t1"),
            letter("driftline.queries", 1, 8, "not ours"),  # another topic's event at the next offset
            letter(LABELS, -1, -1, "an output the broker refused"),  # no source event to name
            Msg(0, 1, b"not json"),
        ],
        LABELS,
    )
    assert refused == {(1, 7): "duplicate label for task t1"}
    export = export_rows(
        [Msg(1, 6, label("t1", "alice")), Msg(1, 7, label("t1", "mallory")),
         Msg(1, 8, label("t2", "bob", None)), Msg(2, 0, b'{"schema": "query/1"}'), Msg(2, 1, None)],
        refused,
    )  # fmt: skip
    assert export.unreadable == 2 and export.refused == 1
    first, dup, old = export.rows
    assert first == {
        "task_id": "t1", "query_id": "q-t1", "annotator": "alice", "ts": 1_764_000_000.5,
        "time": "2025-11-24T16:00:00.500000+00:00", "model_version": 3, "grades": {"d0": 2, "d1": 4},
        "partition": 1, "offset": 6, "refused": None,
    }  # fmt: skip
    assert (dup["annotator"], dup["refused"]) == ("mallory", "duplicate label for task t1")
    assert old["model_version"] is None  # labels from before the field


def test_the_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "labels.jsonl"
    write_jsonl([{"a": 1}, {"b": [2]}], out)
    assert out.read_text() == '{"a":1}\n{"b":[2]}\n'

    def failing():
        yield {"c": 3}
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError):
        write_jsonl(failing(), out)
    assert out.read_text() == '{"a":1}\n{"b":[2]}\n'  # the previous export stands
    assert [p.name for p in out.parent.iterdir()] == ["labels.jsonl"]  # no partial file left
    with pytest.raises(ValueError, match=r"cannot write .*sub: Is a directory"):
        write_jsonl([{"a": 1}], out.parent)


@pytest.mark.kafka
@pytest.mark.slow
def test_export_through_a_real_worker(kafka, worker_factory, minted_tokens, tmp_path, monkeypatch) -> None:
    from streams import cli
    from streams.producer import make_producer, send_all
    from streams.tokens import Role
    from tests.streams.helpers import get_json, post_json, read_topic, wait_until

    alice, bob = (minted_tokens.mint(name, Role.ANNOTATOR) for name in ("alice", "bob"))
    queries, truth = query_records(synthetic_queries(2, docs=10))
    worker = worker_factory("rank", ["rank.budget=2", "rank.budget_window=2", "rank.rounds=10"]).start()

    def state() -> dict:
        return get_json(f"{worker.base}/labeling/status")[1]

    def grade(token: str) -> dict:
        code, view = get_json(f"{worker.base}/labeling/next", token=token)
        assert code == 200 and view["task"], view
        task = view["task"]
        url = f"{worker.base}/labeling/{task['task_id']}"
        code, body = post_json(url, {"grades": truth[task["query_id"]]}, token=token)
        assert code == 202, body
        return task

    producer = make_producer(kafka.bootstrap)
    try:
        send_all(producer, "queries", queries, progress=False)
        wait_until(lambda: state()["queue"]["queued"] == 2, what="2 tasks")
        first = grade(alice)
        wait_until(lambda: state()["model_version"] == 1, what="alice's label learned")
        grade(bob)
        wait_until(lambda: state()["queue"]["done"] == 2, what="bob's label learned")
        # a script sends alice's label again straight to the topic: the service refuses it
        forged = Label(task_id=first["task_id"], query_id=first["query_id"], ts=1.0,
                       grades=truth[first["query_id"]], annotator="script")  # fmt: skip
        send_all(producer, "labels", [forged], progress=False)
    finally:
        producer.close()
    assert read_topic(kafka.bootstrap, topic_name("dead-letter"), 1), "the duplicate was dead-lettered"

    monkeypatch.setenv("DRIFTLINE_BOOTSTRAP_SERVERS", kafka.bootstrap)
    out = tmp_path / "labels.jsonl"
    assert cli.main(["labels", "export", "--out", str(out)]) == 0
    rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["ts"])
    assert [(r["annotator"], r["model_version"]) for r in rows] == [
        ("script", None),
        ("alice", 0),
        ("bob", 1),
    ]
    assert rows[0]["refused"] == f"duplicate label for task {first['task_id']}"
    assert (
        rows[1]["task_id"] == first["task_id"] and rows[1]["refused"] is None and rows[2]["refused"] is None
    )
    assert all(r["grades"] == truth[r["query_id"]] for r in rows)

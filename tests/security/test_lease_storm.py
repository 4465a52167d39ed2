"""Lease storms (``bench/lease_storm.py``, shortened): 50 annotators take, skip, abandon and submit
at once; no task is held twice, no label is lost or counted twice, expired leases requeue. The
checks are shown to catch each kind of fault on a deliberately broken queue."""

from __future__ import annotations

import asyncio

from bench.lease_storm import run_storm
from rankers.labeling_queue import Entry, LabelingQueue


def test_fifty_annotators_never_share_a_task_nor_lose_or_double_a_label(capsys):
    report = asyncio.run(run_storm(clients=50, duration_s=12.0, lease_s=0.3))
    with capsys.disabled():
        print(f"\nlease storm (synthetic queries): {report.summary()}")
    assert report.double_leases == []
    assert report.lost_labels == []
    assert report.double_labels == []
    assert report.ops["next"] > 500 and report.ops["submit"] > 200 and report.ops["skip"] > 50
    assert report.answers[409] > 0  # late and second submissions were refused
    assert report.requeued_after_expiry > 0  # abandoned leases ran out and others took the tasks
    assert report.tasks > 0 and report.labeled_at_end == report.tasks  # each labeled exactly once


def test_the_checks_see_a_task_leased_twice(monkeypatch):
    monkeypatch.setattr(
        Entry, "state_at", lambda self, now: "queued" if self.status == "leased" else self.status
    )
    report = asyncio.run(run_storm(clients=10, duration_s=1.5, lease_s=0.3))
    assert report.double_leases


def test_the_checks_see_lost_and_doubled_labels(monkeypatch):
    finish = LabelingQueue.finish
    calls = iter(range(10**9))
    monkeypatch.setattr(
        LabelingQueue, "finish", lambda self, task: next(calls) % 7 == 0 or finish(self, task)
    )
    report = asyncio.run(run_storm(clients=10, duration_s=1.5, lease_s=0.3))
    assert report.lost_labels  # every 7th learned label never marked its task done
    monkeypatch.undo()
    monkeypatch.setattr(LabelingQueue, "mark_submitted", lambda self, entry: None)
    report = asyncio.run(run_storm(clients=10, duration_s=1.5, lease_s=0.3))
    assert report.double_labels  # a second submission of the same task was accepted

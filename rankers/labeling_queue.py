"""The annotators' queue: tasks waiting, tasks leased to one annotator, tasks whose label is on its way.

A task moves ``queued -> leased -> submitted -> done``. A lease lasts until its recorded absolute
``lease_expires``; past it the task counts as queued again. Expiry is a function of that time and
the (injectable) clock, never a recorded change, so a replayed lease gives the same state at the same
time and a read never writes. A skip requeues the task and keeps it away from the annotator who
skipped it. Leases and skips are decided by the service and applied through
:meth:`LabelingQueue.apply_lease` and :meth:`LabelingQueue.apply_skip`, plain functions of the queue
and the decision, so the same decision replayed from the control topic gives the same queue.
``submitted`` means a Label was accepted over HTTP and is travelling through the labels topic; the
task is ``done`` only when the service has learned from that label, so a crash in between loses
nothing: the label comes back from Kafka. A label that could not be learned (its retrain failed)
sends its task back to the queue (:meth:`LabelingQueue.requeue`). Done task ids are remembered, so
that a replayed query makes no second task and a second label for a task is known as a duplicate,
but only the newest ``done_max`` of them: that is the horizon. A query replayed after more than
``done_max`` later tasks were finished becomes a task again, and a label for a forgotten task waits
in the hold-back as one for a task not created yet. Plain data, so the whole queue round-trips
through a checkpoint. Refusals are :class:`ApiError` with the HTTP status that says why (404 unknown task, 409
lease or duplicate conflicts), because annotators meet them over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.schemas import LabelingTask
from streams.service import ApiError

Status = Literal["queued", "leased", "submitted"]


@dataclass
class Entry:
    """One open task and who holds it."""

    task: LabelingTask
    seq: int
    enqueued_at: float
    status: Status = "queued"
    annotator: str | None = None
    lease_expires: float = 0.0
    skipped_by: set[str] = field(default_factory=set)
    #: Labels learned into this task so far, by annotator (overlap: it waits for more of them).
    labels: dict[str, dict[str, int]] = field(default_factory=dict)

    def state_at(self, now: float) -> Status:
        """The status at ``now``: a lease past ``lease_expires`` counts as queued (annotator kept, so
        a late submit hears "your lease expired")."""
        if self.status == "leased" and self.lease_expires <= now:
            return "queued"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.model_dump(mode="json", by_alias=True),
            "seq": self.seq,
            "enqueued_at": self.enqueued_at,
            "status": self.status,
            "annotator": self.annotator,
            "lease_expires": self.lease_expires,
            "skipped_by": sorted(self.skipped_by),
            "labels": self.labels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(
            task=LabelingTask.model_validate(data["task"]),
            seq=int(data["seq"]),
            enqueued_at=float(data["enqueued_at"]),
            status=data["status"],
            annotator=data["annotator"],
            lease_expires=float(data["lease_expires"]),
            skipped_by=set(data["skipped_by"]),
            labels=dict(data.get("labels", {})),
        )


class LabelingQueue:
    """Open tasks by id, most informative first, leased to one annotator at a time."""

    def __init__(
        self, lease_s: float = 300.0, clock: Callable[[], float] = time.time, done_max: int = 100_000
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        if done_max < 1:
            raise ValueError("done_max must be >= 1")
        self.lease_s = lease_s
        self.clock = clock
        self.done_max = done_max
        self.entries: dict[str, Entry] = {}
        #: Finished task ids, oldest first (a dict keeps insertion order), at most ``done_max``.
        self.done: dict[str, None] = {}
        #: Per annotator, how many of their labels were learned.
        self.labeled_by: dict[str, int] = {}
        self._seq = 0

    # -- producer side -------------------------------------------------------------------------
    def knows(self, task_id: str) -> bool:
        return task_id in self.entries or task_id in self.done

    def push(self, task: LabelingTask) -> None:
        if self.knows(task.task_id):
            raise ApiError(409, f"task {task.task_id} already exists")
        self._seq += 1
        self.entries[task.task_id] = Entry(task, self._seq, self.clock())

    # -- annotator side ------------------------------------------------------------------------
    def held_by(self, annotator: str) -> Entry | None:
        """The task ``annotator`` holds a live lease on, if any."""
        now = self.clock()
        for entry in self.entries.values():
            if entry.state_at(now) == "leased" and entry.annotator == annotator:
                return entry
        return None

    def best_for(self, annotator: str) -> Entry | None:
        """The most informative queued task ``annotator`` has neither skipped nor labeled (oldest first
        on ties)."""
        now = self.clock()
        waiting = [
            e
            for e in self.entries.values()
            if e.state_at(now) == "queued" and annotator not in e.skipped_by and annotator not in e.labels
        ]
        return max(waiting, key=lambda e: (e.task.score, -e.seq), default=None)

    def holder(self, task_id: str, annotator: str) -> Entry:
        """The task if ``annotator`` holds a live lease on it; else a ApiError saying why not."""
        entry = self._open(task_id)
        status = entry.state_at(self.clock())
        if status == "submitted":
            raise ApiError(409, f"task {task_id} was already submitted (by {entry.annotator})")
        if status == "leased" and entry.annotator != annotator:
            raise ApiError(409, f"task {task_id} is leased to another annotator")
        if status != "leased":
            expired = entry.status == "leased" and entry.annotator == annotator
            why = "your lease expired" if expired else "you hold no lease on it"
            raise ApiError(409, f"task {task_id}: {why}; take it again with GET /labeling/next")
        return entry

    def apply_lease(self, task_id: str, annotator: str, expires_at: float) -> None:
        """``annotator`` holds ``task_id`` until ``expires_at`` (absolute, so a replay agrees)."""
        entry = self._open(task_id)
        entry.status, entry.annotator, entry.lease_expires = "leased", annotator, expires_at

    def apply_skip(self, task_id: str, annotator: str) -> None:
        """``task_id`` goes back to the queue, never again offered to ``annotator``."""
        entry = self._open(task_id)
        entry.status, entry.annotator, entry.lease_expires = "queued", None, 0.0
        entry.skipped_by.add(annotator)

    def mark_submitted(self, entry: Entry) -> None:
        entry.status = "submitted"

    def unmark_submitted(self, entry: Entry) -> None:
        """Undo :meth:`mark_submitted` when the label could not be sent: the lease stands."""
        if self.entries.get(entry.task.task_id) is entry and entry.status == "submitted":
            entry.status = "leased"

    def requeue(self, task_id: str) -> None:
        """The task waits for another label: its last could not be learned, or it needs more (overlap)."""
        entry = self._open(task_id)
        entry.status, entry.annotator, entry.lease_expires = "queued", None, 0.0

    def finish(self, task_id: str) -> None:
        """The task's labels were learned: it leaves the queue for good."""
        self.entries.pop(task_id, None)
        self.done[task_id] = None
        while len(self.done) > self.done_max:
            del self.done[next(iter(self.done))]

    def credit(self, annotators: list[str]) -> None:
        """One more learned task to each of ``annotators``' tally."""
        for annotator in annotators:
            self.labeled_by[annotator] = self.labeled_by.get(annotator, 0) + 1

    def labeled_count(self, annotator: str) -> int:
        """Tasks ``annotator`` labeled: learned, held for more labels (overlap), or on their way."""
        open_ = sum(
            annotator in e.labels or (e.status == "submitted" and e.annotator == annotator)
            for e in self.entries.values()
        )
        return self.labeled_by.get(annotator, 0) + open_

    # -- reporting and state ----------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        now = self.clock()
        counts = {"queued": 0, "leased": 0, "submitted": 0}
        for entry in self.entries.values():
            counts[entry.state_at(now)] += 1
        counts["done"] = len(self.done)
        return counts

    def state_dict(self) -> dict[str, Any]:
        return {
            "entries": [e.to_dict() for e in self.entries.values()],
            "done": list(self.done),
            "labeled_by": dict(self.labeled_by),
            "seq": self._seq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        entries = [Entry.from_dict(d) for d in state["entries"]]
        self.entries = {e.task.task_id: e for e in entries}
        self.done = dict.fromkeys(state["done"][-self.done_max :])  # older checkpoints: sorted, uncapped
        self.labeled_by = dict(state.get("labeled_by", {}))
        self._seq = int(state["seq"])

    def _open(self, task_id: str) -> Entry:
        """The open task ``task_id``; 409 when it was already labeled, 404 when it never existed."""
        entry = self.entries.get(task_id)
        if entry is None:
            if task_id in self.done:
                raise ApiError(409, f"task {task_id} was already labeled")
            raise ApiError(404, f"no task {task_id}")
        return entry

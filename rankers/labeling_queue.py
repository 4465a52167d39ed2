"""The annotators' queue: tasks waiting, tasks leased to one annotator, tasks whose label is on its way.

A task moves ``queued -> leased -> submitted -> done``. A lease lasts ``lease_s`` seconds; when it
runs out the task is queued again (checked lazily on every call, against an injectable clock, so
tests control time). A skip requeues the task and keeps it away from the annotator who skipped it.
``submitted`` means a Label was accepted over HTTP and is travelling through the labels topic; the
task is ``done`` only when the service has learned from that label, so a crash in between loses
nothing: the label comes back from Kafka. Plain data, so the whole queue round-trips through a
checkpoint. Refusals are :class:`ApiError` with the HTTP status that says why (404 unknown task, 409
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.model_dump(mode="json", by_alias=True),
            "seq": self.seq,
            "enqueued_at": self.enqueued_at,
            "status": self.status,
            "annotator": self.annotator,
            "lease_expires": self.lease_expires,
            "skipped_by": sorted(self.skipped_by),
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
        )


class LabelingQueue:
    """Open tasks by id, most informative first, leased to one annotator at a time."""

    def __init__(self, lease_s: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.lease_s = lease_s
        self.clock = clock
        self.entries: dict[str, Entry] = {}
        self.done: set[str] = set()
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
    def lease(self, annotator: str) -> Entry | None:
        """The annotator's live lease, else the best queued task they have not skipped, leased now."""
        now = self._expire()
        for entry in self.entries.values():
            if entry.status == "leased" and entry.annotator == annotator:
                return entry
        waiting = [e for e in self.entries.values() if e.status == "queued" and annotator not in e.skipped_by]
        if not waiting:
            return None
        best = max(waiting, key=lambda e: (e.task.score, -e.seq))
        best.status, best.annotator, best.lease_expires = "leased", annotator, now + self.lease_s
        return best

    def holder(self, task_id: str, annotator: str) -> Entry:
        """The task if ``annotator`` holds a live lease on it; else a ApiError saying why not."""
        now = self._expire()
        entry = self.entries.get(task_id)
        if entry is None:
            if task_id in self.done:
                raise ApiError(409, f"task {task_id} was already labeled")
            raise ApiError(404, f"no task {task_id}")
        if entry.status == "submitted":
            raise ApiError(409, f"task {task_id} was already submitted (by {entry.annotator})")
        if entry.status == "leased" and entry.annotator != annotator:
            raise ApiError(409, f"task {task_id} is leased to another annotator")
        if entry.status != "leased":
            expired = entry.annotator == annotator and entry.lease_expires <= now
            why = "your lease expired" if expired else "you hold no lease on it"
            raise ApiError(409, f"task {task_id}: {why}; take it again with GET /labeling/next")
        return entry

    def skip(self, task_id: str, annotator: str) -> Entry:
        entry = self.holder(task_id, annotator)
        entry.status, entry.annotator, entry.lease_expires = "queued", None, 0.0
        entry.skipped_by.add(annotator)
        return entry

    def mark_submitted(self, entry: Entry) -> None:
        entry.status = "submitted"

    def unmark_submitted(self, entry: Entry) -> None:
        """Undo :meth:`mark_submitted` when the label could not be sent: the lease stands."""
        if self.entries.get(entry.task.task_id) is entry and entry.status == "submitted":
            entry.status = "leased"

    def finish(self, task_id: str) -> None:
        """The label was learned: the task leaves the queue for good."""
        self.entries.pop(task_id, None)
        self.done.add(task_id)

    # -- reporting and state ----------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        self._expire()
        counts = {"queued": 0, "leased": 0, "submitted": 0}
        for entry in self.entries.values():
            counts[entry.status] += 1
        counts["done"] = len(self.done)
        return counts

    def state_dict(self) -> dict[str, Any]:
        return {
            "entries": [e.to_dict() for e in self.entries.values()],
            "done": sorted(self.done),
            "seq": self._seq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        entries = [Entry.from_dict(d) for d in state["entries"]]
        self.entries = {e.task.task_id: e for e in entries}
        self.done = set(state["done"])
        self._seq = int(state["seq"])

    def _expire(self) -> float:
        now = self.clock()
        for entry in self.entries.values():
            if entry.status == "leased" and entry.lease_expires <= now:
                entry.status = "queued"  # annotator kept, so a late submit hears "your lease expired"
        return now

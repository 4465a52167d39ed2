"""Records that arrive before the task they are about, held until the query that creates the task.

Kafka gives no order across topics, so a replay from a checkpoint can hand the rank service a label or
a lease/skip outcome before the query whose task it names. Such a record waits here, per task id and in
arrival order, as part of the checkpointed service state, until the service takes it back for the new
task. The hold-back is bounded so a record whose task never comes cannot pile up: at ``max_records``
a new record is refused, and one held longer than ``ttl_s`` by the service clock is given up. Counting
age from the moment of holding (not from the record's own time) keeps a long outage from expiring
records that are merely old. What is refused or given up is for the caller to dead-letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.schemas import Label, Outcome, parse_record


@dataclass(frozen=True)
class Held:
    """One record waiting for ``task_id``, with the topic it came from (for its dead letter)."""

    task_id: str
    topic: str
    record: Label | Outcome
    held_at: float

    def to_dict(self) -> dict[str, Any]:
        record = self.record.model_dump(mode="json", by_alias=True)
        return {"task_id": self.task_id, "topic": self.topic, "held_at": self.held_at, "record": record}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Held:
        record = parse_record(data["record"])
        if not isinstance(record, Label | Outcome):
            raise ValueError(f"a held record is a label or an outcome, not {type(record).__name__}")
        return cls(str(data["task_id"]), str(data["topic"]), record, float(data["held_at"]))


class HoldBack:
    """Labels and outcomes by the task id they wait for, oldest first, bounded in count and age."""

    def __init__(self, max_records: int, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        if type(max_records) is not int or max_records < 0:
            raise ValueError(f"pending_max must be an integer >= 0, got {max_records!r}")
        if type(ttl_s) not in (int, float) or not ttl_s > 0:
            raise ValueError(f"pending_ttl_s must be a number of seconds > 0, got {ttl_s!r}")
        self.max_records, self.ttl_s, self.clock = max_records, ttl_s, clock
        self._held: dict[str, list[Held]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._held

    def hold(self, task_id: str, topic: str, record: Label | Outcome) -> bool:
        """Keep ``record`` for ``task_id``; False (nothing kept) when the hold-back is full."""
        if self._count >= self.max_records:
            return False
        self._held.setdefault(task_id, []).append(Held(task_id, topic, record, self.clock()))
        self._count += 1
        return True

    def take(self, task_id: str) -> list[Held]:
        """Everything held for ``task_id``, in arrival order; none of it is held any more."""
        held = self._held.pop(task_id, [])
        self._count -= len(held)
        return held

    def expire(self) -> list[Held]:
        """Give up the records held longer than ``ttl_s``, oldest first."""
        if not self._count:
            return []
        cutoff = self.clock() - self.ttl_s
        expired: list[Held] = []
        for task_id in list(self._held):
            old = [h for h in self._held[task_id] if h.held_at < cutoff]
            if not old:
                continue
            expired.extend(old)
            kept = [h for h in self._held[task_id] if h.held_at >= cutoff]
            if kept:
                self._held[task_id] = kept
            else:
                del self._held[task_id]
        self._count -= len(expired)
        return sorted(expired, key=lambda h: h.held_at)

    def state_dict(self) -> dict[str, Any]:
        return {"held": [h.to_dict() for held in self._held.values() for h in held]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._held = {}
        for data in state["held"]:
            held = Held.from_dict(data)
            self._held.setdefault(held.task_id, []).append(held)
        self._count = sum(len(h) for h in self._held.values())

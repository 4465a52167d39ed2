"""Drive a RankService without Kafka: records in, outputs and emitted labels out, handlers called."""

from __future__ import annotations

import asyncio
from typing import Any

from rankers.service import RankService
from streams.schemas import Label, Outcome
from streams.service import ApiRequest, ApiResponse, Output
from streams.topics import topic_name

QUERIES, LABELS, QUEUE = topic_name("queries"), topic_name("labels"), topic_name("labeling-queue")
CONTROL = topic_name("control")


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    """A service plus what it emitted; ``call`` runs a route handler like the HTTP adapter would."""

    def __init__(self, service: RankService) -> None:
        self.service = service
        self.emitted: list[Output] = []
        self.fail_emit = False
        self.routes = {(r.method, r.path): r.handler for r in service.routes()}

        async def emit(output: Output) -> None:
            await asyncio.sleep(0)  # a real send yields to the loop: other handlers run meanwhile
            if self.fail_emit:
                raise ConnectionError("broker unreachable")
            self.emitted.append(output)

        service.emit = emit

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        body: Any = None,
    ) -> ApiResponse:
        request = ApiRequest(method, params or {}, query or {}, body)
        return asyncio.run(self.routes[(method, path)](request))

    def next_task(self, annotator: str) -> dict[str, Any] | None:
        return self.call("GET", "/labeling/next", query={"annotator": annotator}).body["task"]

    def submit(self, task_id: str, grades: dict[str, Any], annotator: str) -> ApiResponse:
        return self.call(
            "POST", "/labeling/{task}", {"task": task_id}, body={"grades": grades, "annotator": annotator}
        )

    def deliver_labels(self) -> None:
        """What the worker does with emitted labels: they come back on the labels topic."""
        labels = [o.record for o in self.emitted if o.topic == LABELS]
        self.emitted = [o for o in self.emitted if o.topic != LABELS]
        if labels:
            result = self.service.process(LABELS, labels)
            assert not result.rejected, result.rejected

    def annotate_all(self, truth: dict[str, dict[str, int]], annotator: str = "ann") -> int:
        """Take every queued task, grade it truthfully, and let the labels flow back; return how many."""
        done = 0
        while (task := self.next_task(annotator)) is not None:
            assert self.submit(task["task_id"], truth[task["query_id"]], annotator).status == 202
            done += 1
        self.deliver_labels()
        return done


def labels_of(outputs: list[Output]) -> list[Label]:
    return [o.record for o in outputs if isinstance(o.record, Label)]


def outcomes_of(outputs: list[Output]) -> list[Outcome]:
    """The outcomes sent to the control topic, each keyed by its own key as the worker sends it."""
    found = [o for o in outputs if o.topic == CONTROL]
    assert all(isinstance(o.record, Outcome) and o.key == o.record.key for o in found), found
    return [o.record for o in found]  # type: ignore[misc]

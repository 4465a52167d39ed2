"""Stream-mode active learning-to-rank: replay queries through ``RankService`` itself, annotators simulated.

The pool simulation (:mod:`rankers.active`) lets the selector pick the best queries of a whole pool.
The service cannot: queries arrive one at a time, each is kept or passed over at once (the budget of
its window, the percentile threshold), and the committee only grows when labels come back, late.
This module measures that setting with the production code path: query micro-batches go through
``RankService.process`` on the queries topic (the same selector, budget rule, threshold and
committee as a worker), and the tasks it queues are answered by truthful annotators ``delay``
queries later, as one labels micro-batch per query micro-batch (one retrain each, as in the worker).
No Kafka, no HTTP: the service's pure apply path, so a run takes seconds.

Learning is cut exactly at every ``checkpoints`` label count (a labels micro-batch that would pass
one is split there), so selectors are compared on models trained on the same number of labels; the
held-out metrics are taken after every retrain.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rankers.data import QueryBatch
from rankers.metrics import mean_metrics
from rankers.records import query_records
from rankers.service import RankService
from streams.schemas import Label, LabelingTask, Query
from streams.topics import topic_name

QUERIES, LABELS, QUEUE = topic_name("queries"), topic_name("labels"), topic_name("labeling-queue")


@dataclass(frozen=True)
class StreamSettings:
    """The replay's knobs; ``service`` holds extra ``RankService`` options (e.g. ``alpha``)."""

    budget: int = 40
    budget_window: int = 100
    delay: int = 20
    batch: int = 20
    max_labels: int = 200
    checkpoints: tuple[int, ...] = (50, 100, 200)
    committee_size: int = 4
    rounds: int = 100
    #: Pace the budget over each window (:mod:`rankers.budget`; the service's ``budget_pace``).
    pace: bool = False
    service: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.delay < 0 or self.batch < 1 or self.max_labels < 1:
            raise ValueError("need delay >= 0, batch >= 1 and max_labels >= 1")


@dataclass
class StreamRun:
    """What one replay produced: held-out metrics per learned-label count, and the labels' trace."""

    points: dict[int, dict[str, float]] = field(default_factory=dict)
    #: Per learned label, in learning order: (query index that made the task, index reached when learned).
    learned_at: list[tuple[int, int]] = field(default_factory=list)
    labeled_ids: list[str] = field(default_factory=list)
    #: Per task queued, the selector that scored it ("cold-start" before the first model).
    task_selectors: list[str] = field(default_factory=list)
    queries_seen: int = 0


def make_service(selector: str, settings: StreamSettings, seed: int) -> RankService:
    """A service configured like a worker, with a fixed clock (nothing here depends on wall time)."""
    return RankService(
        selector=selector, seed=seed, committee_size=settings.committee_size, rounds=settings.rounds,
        budget=settings.budget, budget_window=settings.budget_window, budget_pace=settings.pace,
        clock=lambda: 0.0, **settings.service,
    )  # fmt: skip


class _Annotators:
    """Truthful annotators: each task's true grades, handed back ``delay`` queries after its query."""

    def __init__(self, truth: dict[str, dict[str, int]], index: dict[str, int], delay: int) -> None:
        self.truth, self.index, self.delay = truth, index, delay
        self.waiting: deque[tuple[int, Label]] = deque()  # due index ascending: the delay is constant

    def take(self, task: LabelingTask) -> None:
        label = Label(
            task_id=task.task_id, query_id=task.query_id, ts=task.ts, grades=self.truth[task.query_id],
            annotator="sim",
        )  # fmt: skip
        self.waiting.append((self.index[task.query_id] + self.delay, label))

    def due(self, reached: int) -> list[Label]:
        """Labels whose delay has passed once the stream reached query index ``reached``."""
        out = []
        while self.waiting and self.waiting[0][0] <= reached:
            out.append(self.waiting.popleft()[1])
        return out


def stream_run(
    service: RankService, stream: QueryBatch, test: QueryBatch, settings: StreamSettings
) -> StreamRun:
    """Replay ``stream`` (labeled; grades hidden from the service) in order; evaluate on ``test``."""
    if stream.grades is None or test.grades is None:
        raise ValueError("the stream and the test queries must carry their true grades")
    records, truth = query_records(stream)
    index = {q.query_id: i for i, q in enumerate(records)}
    annotators = _Annotators(truth, index, settings.delay)
    run = StreamRun()
    for start in range(0, len(records), settings.batch):
        chunk = records[start : start + settings.batch]
        _queue_tasks(service, chunk, annotators, run)
        reached = start + len(chunk) - 1
        run.queries_seen = reached + 1
        _learn(service, annotators.due(reached), reached, index, test, settings, run)
        if len(run.learned_at) >= settings.max_labels:
            break
    return run


def _queue_tasks(service: RankService, chunk: list[Query], annotators: _Annotators, run: StreamRun) -> None:
    result = service.process(QUERIES, list(chunk))
    if result.rejected:
        raise RuntimeError(f"the service refused replayed queries: {result.rejected}")
    for output in result.outputs:
        if output.topic == QUEUE and isinstance(output.record, LabelingTask):
            annotators.take(output.record)
            run.task_selectors.append(output.record.selector)


def _learn(
    service: RankService,
    labels: list[Label],
    reached: int,
    index: dict[str, int],
    test: QueryBatch,
    settings: StreamSettings,
    run: StreamRun,
) -> None:
    """One labels micro-batch, split at checkpoints and stopped at ``max_labels``; metrics after each."""
    labels = labels[: settings.max_labels - len(run.learned_at)]
    while labels:
        done = len(run.learned_at)
        cut = min((c - done for c in settings.checkpoints if c > done), default=len(labels))
        part, labels = labels[:cut], labels[cut:]
        result = service.process(LABELS, list(part))
        if result.rejected:
            raise RuntimeError(f"the service refused simulated labels: {result.rejected}")
        run.learned_at.extend((index[label.query_id], reached) for label in part)
        run.labeled_ids.extend(label.query_id for label in part)
        run.points[len(run.learned_at)] = mean_metrics(test, service.ranker.predict(test))

"""Active learning-to-rank on the stream: select queries for annotators, learn from their labels, rank.

- ``queries`` topic (:class:`Query`): each query is scored by the selector with the current committee;
  a query becomes a :class:`LabelingTask` (produced on ``labeling-queue`` and held in the annotators'
  queue) when its score's percentile among recent queries reaches ``min_quantile`` and the labeling
  budget of the current window is not spent. Decisions are made query by query in arrival order, so
  they do not depend on how the stream was cut into micro-batches. With ``budget_defer`` the threshold
  gives way to best-of-buffer: undecided queries wait, and each paced budget slot goes to the best of
  them under the current committee (:mod:`rankers.deferral`). Before the first model exists every
  query scores 0 and the budget alone decides (``selector="cold-start"`` on the task).
- ``labels`` topic (:class:`Label`): the labels of one micro-batch are learned together, which is one
  retrain and so one new committee member. A retrain that raises is undone here rather than left to
  the runner: its labels are refused (dead-lettered with the error, so ``driftline dead-letters
  replay`` can send them again once the cause is fixed) and their tasks **requeued** for a new label,
  instead of staying "submitted" for ever. With ``overlap = k`` a task is learned only once k
  different annotators labeled it, from their consensus (:mod:`rankers.agreement`, which also keeps
  each annotator's rank agreement with the others); until then each label is kept in the task and the
  task goes back to the queue for an annotator who has not labeled it. With ``gold_rate`` > 0 a task
  from ``gold_path`` (held-out graded queries, :mod:`rankers.gold`) follows every 1/gold_rate-th
  query; its labels are not learned but scored against the known grades, per annotator, on
  ``GET /labeling/status`` (``gold``, beside ``agreement``).
- ``control`` topic (:class:`Outcome`): the leases and skips decided over HTTP. A handler decides under
  the service lock (applied here at once, so no two annotators get the same task), publishes the
  outcome keyed by task id and answers only once Kafka has it (503 if it cannot). The worker applies
  the topic like any stream; an outcome whose ``seq`` the state holds is a no-op, so a replay after a
  crash rebuilds exactly the leases and skips that were answered. Expiry is not an outcome: it follows
  from the lease's recorded absolute ``expires_at`` and the clock (see :mod:`rankers.labeling_queue`).
  A booster served by hand (``POST /models/rank/promote|rollback``) is a ``serve`` outcome keyed by
  the service name, made the same way (:mod:`rankers.by_hand`, :mod:`rankers.promotion`).
- A label or outcome for a task not created yet (a replay meets it before its query: Kafka orders
  nothing across topics) is held back in the state (:mod:`rankers.holdback`) and applied when the
  query creates the task: the task's outcomes in arrival order, then its labels, the order they were
  made in. It is dead-lettered only when the hold-back is full (``pending_max``), when it waited past
  ``pending_ttl_s``, or when its query came and made no task. Those letters name the record's topic
  but not its offset (-1): the service never sees offsets.
- HTTP: annotators take tasks under a lease, skip, and submit grades; an accepted submission is sent to
  the labels topic through ``emit`` and learned when it comes back, so a crash right after accepting
  loses nothing. ``POST /rank`` ranks candidates with the serving model; ``GET /labeling`` is the page.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from models.checkpoints import CheckpointStore
from rankers.agreement import Agreement, consensus
from rankers.budget import BudgetUnit, LabelingBudget
from rankers.by_hand import ServeByHand
from rankers.data import MAX_GRADE
from rankers.gold import GoldScores, gold_due, load_gold
from rankers.holdback import Held, HoldBack
from rankers.labeling_queue import Entry, LabelingQueue
from rankers.lambdamart import LambdaMARTRanker, UpdateMode
from rankers.promotion import GateConfig, RankGate
from rankers.records import query_batch
from rankers.selectors import PercentileScale, Selector, make_selector
from streams.lifecycle_routes import SERVE, NotKept
from streams.schemas import DeadLetter, Label, LabelingTask, Outcome, Query, Record
from streams.service import (
    ApiError,
    ApiRequest,
    ApiResponse,
    BatchResult,
    ModelService,
    Output,
    Route,
    Subscription,
)
from streams.topics import topic_name


def task_id_for(query: Query) -> str:
    """Deterministic, so a replayed query maps to the task it created before."""
    digest = hashlib.sha1(f"{query.query_id}\x00{query.ts!r}".encode()).hexdigest()[:16]
    return f"t-{digest}"


def _grade_problems(grades: Any, doc_ids: list[str]) -> str | None:
    """Why ``grades`` is not one grade in 0..MAX_GRADE for exactly ``doc_ids``, or None when it is."""
    if not isinstance(grades, dict) or not grades:
        return "grades must be a non-empty object {doc_id: grade}"
    known = set(doc_ids)
    unknown = sorted(set(grades) - known)
    if unknown:
        return f"grades for unknown documents: {', '.join(unknown[:10])}"
    missing = [d for d in doc_ids if d not in grades]
    if missing:
        return f"missing grades for {len(missing)} document(s): {', '.join(missing[:10])}"
    bad = [d for d, g in grades.items() if type(g) is not int or not 0 <= g <= MAX_GRADE]
    if bad:
        return f"grades must be integers 0..{MAX_GRADE}; bad for: {', '.join(sorted(bad)[:10])}"
    return None


class RankService(ModelService):
    """Selector + annotators' queue + LambdaMART committee, served from the stream."""

    name = "rank"

    def __init__(
        self,
        *,
        selector: str = "re+pv",
        alpha: float = 1.0,
        re_top: int | None = None,
        committee_size: int = 4,
        rounds: int = 100,
        mode: UpdateMode = "retrain",
        max_labeled_queries: int | None = 2000,
        budget: int = 10,
        budget_per: BudgetUnit = "queries",
        budget_window: float = 100,
        budget_pace: bool = False,
        budget_defer: int = 0,
        cold_start_tasks: int | None = None,
        min_quantile: float | None = None,
        score_window: int = 1024,
        lease_s: float = 300.0,
        done_max: int = 100_000,
        overlap: int = 1,
        gold_rate: float = 0.0,
        gold_path: str | None = None,
        pending_max: int = 10_000,
        pending_ttl_s: float | None = None,
        seed: int = 0,
        batch_size: int = 64,
        batch_window_s: float = 0.2,
        store: CheckpointStore | None = None,
        gate: GateConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.ranker = LambdaMARTRanker(
            rounds=rounds, mode=mode, committee_size=committee_size, seed=seed, store=store,
            max_labeled_queries=max_labeled_queries,
        )  # fmt: skip
        #: Which checkpoint serves ``/rank``: a retrain's candidate only once it passed the gate.
        self.gate = RankGate(gate)
        self.selector: Selector = make_selector(  # deferring scores the buffer in one call: no window
            selector, alpha=alpha, window=0 if budget_defer else score_window, seed=seed, re_top=re_top
        )
        self.budget = LabelingBudget(budget, budget_window, budget_per, pace=budget_pace, defer=budget_defer)
        if cold_start_tasks is not None and (type(cold_start_tasks) is not int or cold_start_tasks < 0):
            raise ValueError(f"cold_start_tasks must be an integer >= 0 (or unset), got {cold_start_tasks!r}")
        self.cold_start_tasks = cold_start_tasks
        if min_quantile is None:  # aim at `budget` tasks per window of queries; no threshold per second
            min_quantile = max(0.0, 1.0 - budget / budget_window) if budget_per == "queries" else 0.0
        if not 0.0 <= min_quantile <= 1.0:
            raise ValueError("min_quantile must lie in [0, 1]")
        self.min_quantile = min_quantile
        self.score_scale = PercentileScale(score_window)
        if overlap < 1:
            raise ValueError("overlap must be >= 1 (annotators per task)")
        self.overlap = overlap
        self.agreement = Agreement()
        if not 0.0 <= gold_rate <= 1.0 or (gold_rate > 0 and not gold_path):
            raise ValueError(
                "gold_rate must lie in [0, 1]; above 0 it needs gold_path (held-out graded queries)"
            )
        self.gold_rate = gold_rate
        self.gold = load_gold(Path(gold_path)) if gold_path and gold_rate > 0 else []
        self.gold_scores = GoldScores()
        #: Open gold tasks (task id -> index into ``gold``) and the queries counted toward gold_rate.
        self.gold_tasks: dict[str, int] = {}
        self.queries_seen = 0
        self.queue = LabelingQueue(lease_s, clock, done_max)
        #: Labels and outcomes waiting for the query that creates their task; by default they wait a
        #: few lease lengths, ample for a replay to reach the query.
        self.held = HoldBack(pending_max, 3 * lease_s if pending_ttl_s is None else pending_ttl_s, clock)
        self.clock = clock
        self.batch_size, self.batch_window_s = batch_size, batch_window_s
        #: Per task id, outcomes applied here whose publish has not succeeded yet (seq order). The
        #: next answer that rests on that task sends them first, so Kafka never lacks an outcome that
        #: a later one builds on; a crash forgets them, and nobody was told of them. Guarded by its own
        #: short lock, so a handler marks them sent on the event loop without waiting out a retrain.
        self._unsent: dict[str, list[Outcome]] = {}
        self._unsent_lock = threading.Lock()

    # -- stream ------------------------------------------------------------------------------
    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(topic_name("queries"), Query, self.batch_size, self.batch_window_s),
            Subscription(topic_name("labels"), Label, self.batch_size, self.batch_window_s),
            Subscription(topic_name("control"), Outcome, self.batch_size, self.batch_window_s),
        ]

    def process(self, topic: str, records: list[Record]) -> BatchResult:
        expired = [self._dead_letter(h, self._expiry_reason(h)) for h in self.held.expire()]
        result = self._dispatch(topic, records)
        result.outputs[:0] = expired
        return result

    def _dispatch(self, topic: str, records: list[Record]) -> BatchResult:
        if topic == topic_name("queries"):
            queries = [r for r in records if isinstance(r, Query)]
            result = self._select(queries)
            self._release(queries, result)
            return result
        if topic == topic_name("labels"):
            return self._learn([r for r in records if isinstance(r, Label)])
        if topic == topic_name("control"):
            return self._apply_control(records)
        reason = f"rank service does not consume {topic}"
        return BatchResult(rejected=dict.fromkeys(range(len(records)), reason))

    def _select(self, queries: list[Query]) -> BatchResult:
        result = BatchResult()
        usable: list[int] = []
        width = self.ranker.n_features
        for i, query in enumerate(queries):
            if self.queue.knows(task_id_for(query)):
                result.rejected[i] = f"query {query.query_id} at ts {query.ts} already has a task"
            elif width is not None and len(query.documents[0].features) != width:
                got = len(query.documents[0].features)
                result.rejected[i] = f"documents have {got} features, the model expects {width}"
            else:
                usable.append(i)
        if not usable:
            return result
        chosen = [queries[i] for i in usable]
        waiting = self.budget.candidates  # deferring: the buffer is scored at each slot instead
        if self.ranker.fitted and waiting is None:
            batch = query_batch(chosen)
            scores = self.selector.score(batch.split_scores(self.ranker.committee_scores(batch)))
            selector_name = self.selector.name
        else:
            scores, selector_name = np.zeros(len(chosen)), "cold-start"
        tasks: list[Query] = []

        def queue_task(query: Query, score: float, name: str) -> None:
            self.budget.spend()
            task = LabelingTask(
                task_id=task_id_for(query), query_id=query.query_id, ts=query.ts,
                documents=list(query.documents), score=score, selector=name, text=query.text,
            )  # fmt: skip
            self.queue.push(task)
            result.outputs.append(Output(topic_name("labeling-queue"), query.query_id, task))
            tasks.append(query)

        for query, score in zip(chosen, scores, strict=True):
            if self.gold:
                self.queries_seen += 1
                if gold_due(self.queries_seen, self.gold_rate):
                    result.outputs.append(self._push_gold())
            self.budget.arrive(query.ts)
            if not self.ranker.fitted and self.cold_start_tasks is not None:
                cold = sum(e.task.selector == "cold-start" for e in self.queue.entries.values())
                if cold >= self.cold_start_tasks:  # wait for the first model
                    if waiting is not None:
                        waiting.add(task_id_for(query), query)
                    continue
            if waiting is None:
                too_dull = self.ranker.fitted and self.score_scale(np.array([score]))[0] < self.min_quantile
                if not too_dull and self.budget.left > 0:
                    queue_task(query, float(score), selector_name)
                continue
            waiting.add(task_id_for(query), query)
            while self.budget.left > 0 and waiting:
                if self.ranker.fitted:
                    if (picked := waiting.best(self.ranker, self.selector, self.held)) is None:
                        break
                    queue_task(waiting.take(picked[0]), picked[1], self.selector.name)
                else:
                    queue_task(waiting.take(waiting.newest()), 0.0, "cold-start")
        arrived = {id(q) for q in chosen}
        self._release([q for q in tasks if id(q) not in arrived], result)  # they waited past their batch
        result.metrics = {"queries_scored": float(len(chosen)), "tasks_queued": float(len(tasks))}
        return result

    def _push_gold(self) -> Output:
        """Queue the next gold query as a task that looks like any other (its id, selector and score
        do not give it away); its known grades stay here."""
        k = int(self.queries_seen * self.gold_rate) - 1  # gold tasks so far, less this one
        query, _ = self.gold[k % len(self.gold)]
        task_id = "t-" + hashlib.sha1(f"gold\x00{k}".encode()).hexdigest()[:16]
        task = LabelingTask(
            task_id=task_id, query_id=query.query_id, ts=query.ts, documents=list(query.documents),
            score=0.0, selector=self.selector.name, text=query.text,
        )  # fmt: skip
        self.queue.push(task)
        self.gold_tasks[task_id] = k % len(self.gold)
        return Output(topic_name("labeling-queue"), query.query_id, task)

    def _score_gold(self, entry: Entry, label: Label) -> None:
        """A gold task's label is scored against the known grades, never learned."""
        task_id = entry.task.task_id
        self.gold_scores.add(label.annotator, dict(label.grades), self.gold[self.gold_tasks[task_id]][1])
        entry.labels[label.annotator] = dict(label.grades)
        self.queue.credit([label.annotator])
        if len(entry.labels) >= self.overlap:
            self.queue.finish(task_id)
            del self.gold_tasks[task_id]
        elif entry.status == "submitted":
            self.queue.requeue(task_id)

    def _learn(self, labels: list[Label]) -> BatchResult:
        """Learn the labels of known tasks; hold back those whose task is not created yet."""
        result = BatchResult()
        known: list[int] = []
        for i, label in enumerate(labels):
            if self.queue.knows(label.task_id):
                known.append(i)
            elif not self.held.hold(label.task_id, topic_name("labels"), label):
                result.rejected[i] = f"label for unknown task {label.task_id}: {self._full_reason()}"
        learned = self._learn_known([labels[i] for i in known])
        result.rejected.update({known[j]: reason for j, reason in learned.rejected.items()})
        result.metrics = learned.metrics
        return result

    def _learn_known(self, labels: list[Label]) -> BatchResult:
        """Keep each label that fits its open task; learn, in one retrain, the consensus of the tasks
        that now have ``overlap`` labels, and requeue the others for more. The rest rejected (by
        index) with why."""
        result = BatchResult()
        kept: dict[str, list[int]] = {}  # task id -> this batch's labels kept for it
        for i, label in enumerate(labels):
            entry = self.queue.entries.get(label.task_id)
            if entry is None or label.annotator in entry.labels or len(entry.labels) >= self.overlap:
                seen = entry is not None or label.task_id in self.queue.done
                what = "duplicate label for task" if seen else "label for unknown task"
                result.rejected[i] = f"{what} {label.task_id}"
                continue
            problem = _grade_problems(dict(label.grades), [d.doc_id for d in entry.task.documents])
            if problem:
                result.rejected[i] = f"task {label.task_id}: {problem}"
                continue
            if label.task_id in self.gold_tasks:
                self._score_gold(entry, label)
                continue
            entry.labels[label.annotator] = dict(label.grades)
            kept.setdefault(label.task_id, []).append(i)
        entries = [self.queue.entries[t] for t in kept]
        complete = [e for e in entries if len(e.labels) >= self.overlap]
        for entry in entries:
            if len(entry.labels) < self.overlap and entry.status == "submitted":
                self.queue.requeue(entry.task.task_id)  # its label is in: the next annotator's turn
        if not complete:
            return result
        queries = [
            Query(query_id=e.task.query_id, ts=e.task.ts, documents=e.task.documents) for e in complete
        ]
        before, gate_before = self.ranker.state_dict(), self.gate.state_dict()
        try:
            batch = query_batch(queries, [consensus(e.labels) for e in complete])
            watched = self.gate.watch(self.ranker, batch)  # a rollback cuts the label set back first
            result.metrics = {**self.ranker.learn(batch), **watched}
            result.metrics.update(self.gate.retrained(self.ranker, batch, self.batch_offsets, self.clock()))
        except Exception as exc:  # whatever failed the retrain: undo it, requeue its tasks, say why
            self.ranker.load_state_dict(before)
            self.gate.load_state_dict(gate_before, self.ranker)
            why = f"retrain failed ({type(exc).__name__}: {exc}); task requeued for a new label"
            for entry in complete:
                for i in kept[entry.task.task_id]:
                    del entry.labels[labels[i].annotator]
                    result.rejected[i] = f"task {entry.task.task_id}: {why}"
                self.queue.requeue(entry.task.task_id)
            result.metrics = {"retrains_failed": 1.0, "tasks_requeued": float(len(complete))}
            return result
        for entry in complete:
            if len(entry.labels) > 1:
                self.agreement.add(entry.labels)
            self.queue.credit(list(entry.labels))
            self.queue.finish(entry.task.task_id)
        return result

    def _apply_control(self, records: list[Record]) -> BatchResult:
        """Apply this service's outcomes once each (holding back those for tasks not created yet);
        other services' outcomes pass by untouched."""
        result = BatchResult()
        position = {id(r): i for i, r in enumerate(records)}
        applied = 0
        for outcome in self.control_records(records):
            try:
                if self.queue.knows(outcome.key) or outcome.kind == SERVE:
                    applied += self.apply_outcome_once(outcome)
                    continue
                self._outcome_terms(outcome)  # one that no task could take is refused now, not later
            except ApiError as exc:
                result.rejected[position[id(outcome)]] = f"{_outcome_name(outcome)}: {exc.message}"
                continue
            if not self.held.hold(outcome.key, topic_name("control"), outcome):
                where = f"{_outcome_name(outcome)}: no task {outcome.key} yet"
                result.rejected[position[id(outcome)]] = f"{where}; {self._full_reason()}"
        result.metrics = {"outcomes_applied": float(applied)}
        return result

    def apply_outcome(self, outcome: Outcome) -> None:
        """A lease or skip on task ``outcome.key``, or a booster served by hand: a pure function of
        the state and the outcome."""
        if outcome.kind == SERVE:
            self.gate.serve_by_hand(ServeByHand.of(outcome))
            return
        annotator, expires_at = self._outcome_terms(outcome)
        if expires_at is None:
            self.queue.apply_skip(outcome.key, annotator)
        else:
            self.queue.apply_lease(outcome.key, annotator, expires_at)

    def _outcome_terms(self, outcome: Outcome) -> tuple[str, float | None]:
        """Who, and until when (None for a skip); ApiError 400 for an outcome no task could take."""
        annotator = _annotator(outcome.data.get("annotator"))
        if outcome.kind == "skip":
            return annotator, None
        if outcome.kind != "lease":
            super().apply_outcome(outcome)  # refuses the kinds this service does not take
        expires_at = outcome.data.get("expires_at")
        if type(expires_at) not in (int, float):
            raise ApiError(400, "a lease outcome needs a numeric expires_at")
        return annotator, float(expires_at)

    # -- records held back until their task exists -------------------------------------------------
    def _release(self, queries: list[Query], result: BatchResult) -> None:
        """Apply what waited for the tasks of ``queries``: outcomes, then labels (the order they were
        made in: a label follows its lease); dead-letter what waited for a query that made no task.
        Their batches are past, so their refusals go out as dead-letter outputs."""
        outcomes: list[tuple[Held, Outcome]] = []
        labels: list[tuple[Held, Label]] = []
        for query in queries:
            task_id = task_id_for(query)
            if task_id not in self.held:
                continue
            waiting = self.held.take(task_id)
            if not self.queue.knows(task_id):
                why = f"query {query.query_id} at ts {query.ts} did not become a labeling task"
                result.outputs.extend(self._dead_letter(h, why) for h in waiting)
                continue
            outcomes.extend((h, h.record) for h in waiting if isinstance(h.record, Outcome))
            labels.extend((h, h.record) for h in waiting if isinstance(h.record, Label))
        if not outcomes and not labels:
            return
        applied = 0
        for held, outcome in outcomes:
            try:
                applied += self.apply_outcome_once(outcome)
            except ApiError as exc:
                result.outputs.append(self._dead_letter(held, f"{_outcome_name(outcome)}: {exc.message}"))
        learned = self._learn_known([label for _, label in labels])
        for i, why in sorted(learned.rejected.items()):
            result.outputs.append(self._dead_letter(labels[i][0], why))
        released = {"held_outcomes_applied": float(applied), "held_labels_released": float(len(labels))}
        result.metrics = {**result.metrics, **learned.metrics, **released}

    def _dead_letter(self, held: Held, reason: str) -> Output:
        letter = DeadLetter(
            topic=held.topic, partition=-1, offset=-1, reason=reason,
            payload=held.record.to_bytes().decode(), ts=self.clock(),
        )  # fmt: skip
        return Output(topic_name("dead-letter"), held.task_id, letter)

    def _expiry_reason(self, held: Held) -> str:
        waited = self.clock() - held.held_at
        return (
            f"held back {waited:.0f} s for task {held.task_id}, past pending_ttl_s={self.held.ttl_s:g}: "
            "the query that creates it never came"
        )

    def _full_reason(self) -> str:
        return f"hold-back full ({self.held.max_records} records wait for their tasks; pending_max)"

    # -- HTTP --------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("GET", "/labeling", self._page, role="open"),  # browsers send no token on navigation
            Route("GET", "/labeling.js", self._script, role="open"),
            Route("GET", "/labeling/next", self._next, role="annotator"),  # takes a lease
            Route("GET", "/labeling/status", self._status),
            Route("POST", "/labeling/{task}/skip", self._skip, role="annotator"),
            Route("POST", "/labeling/{task}", self._submit, role="annotator"),
            Route("POST", "/rank", self._rank, role="reader"),  # a query, though posted
        ]

    async def _page(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(_static("labeling.html"), content_type="text/html")

    async def _script(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(_static("labeling.js"), content_type="text/javascript")

    async def _next(self, request: ApiRequest) -> ApiResponse:
        annotator = _annotator_of(request, request.query.get("annotator"))
        view, outcomes = await self.run_locked(self._lease, annotator)
        await self._record(outcomes)
        return ApiResponse(view)

    async def _status(self, request: ApiRequest) -> ApiResponse:
        return ApiResponse(await self.run_locked(self._status_view))

    async def _skip(self, request: ApiRequest) -> ApiResponse:
        annotator = _annotator_of(request, _body(request).get("annotator"))
        task_id = request.path_params["task"]
        await self._record(await self.run_locked(self._skip_locked, task_id, annotator))
        return ApiResponse({"task_id": task_id, "requeued": True})

    async def _submit(self, request: ApiRequest) -> ApiResponse:
        body = _body(request)
        annotator = _annotator_of(request, body.get("annotator"))
        entry, label = await self.run_locked(self._accept, request.path_params["task"], annotator, body)
        assert self.emit is not None  # _accept checked it
        try:
            await self.emit(Output(topic_name("labels"), label.query_id, label))
        except Exception as exc:
            await self.run_locked(self.queue.unmark_submitted, entry)
            raise ApiError(503, f"label not sent, try again: {type(exc).__name__}: {exc}") from None
        answer = {"task_id": label.task_id, "graded": len(label.grades), "status": "submitted"}
        return ApiResponse(answer, status=202)

    async def _rank(self, request: ApiRequest) -> ApiResponse:
        body = _body(request)
        try:
            query = Query(query_id="rank", ts=self.clock(), documents=body.get("documents"))
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ApiError(400, f"bad documents: {reason}") from None
        snapshot = self.gate.snapshot  # no lock: a retrain in progress does not hold up ranking
        if snapshot is None:
            raise ApiError(503, "no model yet: it needs at least one labeled query")
        booster, version = snapshot
        try:
            scores = await asyncio.to_thread(self.ranker.score_with, booster, query_batch([query]))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        order = np.argsort(-scores, kind="stable")
        ranking = [{"doc_id": query.documents[i].doc_id, "score": float(scores[i])} for i in order]
        return ApiResponse({"ranking": ranking, "model_version": version})

    async def _record(self, outcomes: list[Outcome]) -> None:
        """Publish the outcomes an answer rests on, in order, before it is given; 503 if Kafka cannot.

        On failure the change stays applied here and listed as unsent: the caller's retry (or anyone's
        next change on that task) sends it first. Resending one that did arrive is harmless: same seq.
        """
        for outcome in outcomes:
            await self.publish_outcome(outcome)
        self._mark_sent(outcomes)

    # -- locked parts of the handlers (run by run_locked in a thread) -----------------------------
    def _lease(self, annotator: str) -> tuple[dict[str, Any], list[Outcome]]:
        """The annotator's live lease, else the best task leased now; plus the outcomes to publish."""
        held = self.queue.held_by(annotator)
        if held is not None:
            return self._task_view(held, annotator), self._unsent_of(held.task.task_id)
        best = self.queue.best_for(annotator)
        if best is None:
            return {"task": None, **self._progress(annotator)}, []
        now = self.clock()
        data = {"annotator": annotator, "expires_at": now + self.queue.lease_s}
        outcomes = self._decide("lease", best.task.task_id, data, now)
        return self._task_view(best, annotator), outcomes

    def _skip_locked(self, task_id: str, annotator: str) -> list[Outcome]:
        """The skip outcome to publish; a retry of a skip still unsent resends it, deciding nothing new."""
        unsent = self._unsent_of(task_id)
        if unsent and unsent[-1].kind == "skip" and unsent[-1].data.get("annotator") == annotator:
            return unsent
        self.queue.holder(task_id, annotator)
        return self._decide("skip", task_id, {"annotator": annotator}, self.clock())

    def _decide(self, kind: str, task_id: str, data: dict[str, Any], now: float) -> list[Outcome]:
        """Apply a new outcome on ``task_id`` here; return every unsent outcome of that task, in order."""
        outcome = self.new_outcome(kind, key=task_id, data=data, ts=now)
        with self._unsent_lock:
            self._unsent.setdefault(task_id, []).append(outcome)
        return self._unsent_of(task_id)

    # -- outcomes not yet sent (their own lock: touched on the event loop too) ---------------------
    def _unsent_of(self, task_id: str) -> list[Outcome]:
        with self._unsent_lock:
            return list(self._unsent.get(task_id, []))

    def _mark_sent(self, outcomes: list[Outcome]) -> None:
        """The broker has ``outcomes``: they and any older ones of their tasks are unsent no more."""
        with self._unsent_lock:
            for outcome in outcomes:
                left = [o for o in self._unsent.get(outcome.key, []) if o.seq > outcome.seq]
                if left:
                    self._unsent[outcome.key] = left
                else:
                    self._unsent.pop(outcome.key, None)

    def _status_view(self) -> dict[str, Any]:
        return {
            "queue": self.queue.counts(),
            "budget": self.budget.summary(),
            "model_version": self.model_version(),
            "committee": len(self.ranker.committee()),
            "labeled_queries": 0 if self.ranker.labeled is None else self.ranker.labeled.n_queries,
            "held_back": len(self.held),
            "overlap": self.overlap,
            "now": self.clock(),  # a page counts a lease down from lease_expires - now
            "agreement": self.agreement.summary(),
            "gold": self.gold_scores.summary(),  # per annotator, against the known grades of gold tasks
        }

    def _accept(self, task_id: str, annotator: str, body: dict[str, Any]) -> tuple[Entry, Label]:
        """Validate a submission against the lease and the task; mark it submitted; the Label to send."""
        entry = self.queue.holder(task_id, annotator)
        problem = _grade_problems(body.get("grades"), [d.doc_id for d in entry.task.documents])
        if problem:
            raise ApiError(400, problem)
        if self.emit is None:
            raise ApiError(503, "labels cannot be sent: no producer is attached to this service")
        label = Label(
            task_id=task_id,
            query_id=entry.task.query_id,
            ts=self.clock(),
            grades=body["grades"],
            annotator=annotator,
            model_version=self.model_version(),
        )
        self.queue.mark_submitted(entry)
        return entry, label

    def _task_view(self, entry: Entry, annotator: str) -> dict[str, Any]:
        return {
            "task": entry.task.model_dump(mode="json", by_alias=True, exclude_none=True),
            "lease_expires": entry.lease_expires,
            "lease_s": self.queue.lease_s,
            "max_grade": MAX_GRADE,
            **self._progress(annotator),
        }

    def _progress(self, annotator: str) -> dict[str, Any]:
        """What the page shows beside a task: the queue's depth and the annotator's tally (no clock,
        so asking again for the same lease gives the same answer; the clock is on the status)."""
        return {"queue": self.queue.counts(), "labeled": self.queue.labeled_count(annotator)}

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "ranker": self.ranker.state_dict(),
            "gate": self.gate.state_dict(),
            "selector": self.selector.state_dict(),
            "score_history": list(self.score_scale.history),
            "queue": self.queue.state_dict(),
            "budget": self.budget.state_dict(),
            "held": self.held.state_dict(),
            "agreement": self.agreement.state_dict(),
            "gold": {
                "scores": self.gold_scores.state_dict(),
                "tasks": dict(self.gold_tasks),
                "queries_seen": self.queries_seen,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ranker.load_state_dict(state["ranker"])
        self.gate.load_state_dict(state.get("gate"), self.ranker)  # None: a checkpoint from before the gate
        self.selector.load_state_dict(state["selector"])
        self.score_scale.history.clear()
        self.score_scale.history.extend(state["score_history"])
        self.queue.load_state_dict(state["queue"])
        self.budget.load_state_dict(state["budget"])
        self.held.load_state_dict(state.get("held", {"held": []}))  # checkpoints from before hold-back
        self.agreement.load_state_dict(state.get("agreement", {"pairs": {}}))
        gold = state.get("gold", {"scores": {"by_annotator": {}}, "tasks": {}, "queries_seen": 0})
        self.gold_scores.load_state_dict(gold["scores"])
        self.gold_tasks, self.queries_seen = dict(gold["tasks"]), int(gold["queries_seen"])
        with self._unsent_lock:
            self._unsent.clear()  # the loaded state (and its outcome seqs, which the runner restores) rules

    def model_version(self) -> int:
        """The serving version (the ranker's newer checkpoints may still wait for the gate)."""
        return self.gate.serving_version

    # -- lineage (GET /models) ---------------------------------------------------------------------
    def lineage_body(self) -> dict[str, Any]:
        return self.gate.lineage.body()

    async def serve_version(self, action: str, number: int | None) -> dict[str, Any]:
        """``POST /models/rank/{promote,rollback}``: serve a kept booster by hand, answered once the
        control topic has the decision (:mod:`rankers.by_hand`)."""
        outcome = await self.run_locked(self._decide_serve, number, action)
        await self.publish_outcome(outcome)
        return {"serving": outcome.data["version"], "was": outcome.data["was"], "action": action}

    def _decide_serve(self, number: int | None, action: str) -> Outcome:
        """The outcome serving kept booster ``number`` (default: the one before the serving one for a
        rollback, the newest for a promote), applied here at once; 409 when none is kept."""
        try:
            target = self.gate.manual_target(action, number)
        except NotKept as exc:
            raise ApiError(409, str(exc)) from None
        serve = ServeByHand.encode(
            target.version, target.model, was=self.model_version(), learned=self.gate.learned,
            offsets=target.offsets, trained_at=target.trained_at, action=action,
        )  # fmt: skip
        return self.new_outcome(SERVE, key=self.name, data=serve.data(), ts=self.clock())

    def on_drift(self, action: str) -> None:
        """A drift alarm (:class:`streams.drift.Adapts`): see :meth:`RankGate.on_drift`."""
        self.gate.on_drift(action)


def _body(request: ApiRequest) -> dict[str, Any]:
    if not isinstance(request.body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return request.body


def _outcome_name(outcome: Outcome) -> str:
    return f"{outcome.kind} outcome #{outcome.seq} for {outcome.key}"


def _static(name: str) -> str:
    return resources.files("rankers").joinpath("static", name).read_text(encoding="utf-8")


def _annotator_of(request: ApiRequest, given: Any) -> str:
    """The authenticated name when the request has one (any name it gives is ignored), else ``given``.

    Over HTTP the labeling routes need an annotator token, so labels always carry the token's name;
    only in-process callers (tests, benchmarks) name the annotator themselves.
    """
    return request.principal or _annotator(given)


def _annotator(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ApiError(400, "annotator is required (a non-empty name of at most 200 characters)")
    return value.strip()


def build_service(data_dir: Path, **options: Any) -> RankService:
    """The worker's factory: every retrain is also kept as a versioned checkpoint under ``data_dir``."""
    committee = int(options.get("committee_size", 4))
    store = CheckpointStore(data_dir, "lambdamart-committee", keep=max(10, committee))
    return RankService(store=store, gate=GateConfig.pop_from(options), **options)

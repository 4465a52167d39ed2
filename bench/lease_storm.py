"""Lease storm: many annotators take, skip, abandon and submit at once against the rank service.

In process (no Kafka, no socket), like the worker runs it: the real route handlers on one event
loop (each takes the service lock in a thread), a feeder handing new queries to
``RankService.process`` and a deliverer handing the submitted labels back through the labels
topic's path, both holding the service lock as the runner does. Leases are short, so abandoned
tasks expire and requeue many times during a run. Synthetic queries.

Checked from what the service published (the control topic's outcomes and the labels), not from
its own state:

- **double leases**: a task leased to an annotator while another's lease on it was live (not
  expired, skipped or submitted);
- **lost labels**: an accepted submission (202) whose label never arrived, or was not learned;
- **double labels**: a task with two accepted submissions, or a label learned twice;
- **requeued after expiry**: leases taken on a task whose previous holder let the lease run out.

After the storm every task left is drained by one annotator, so each task ends labeled exactly once.

    .venv/bin/python bench/lease_storm.py                   # 50 annotators for 60 s
    .venv/bin/python bench/lease_storm.py --duration 10     # shorter
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rankers.service import RankService  # noqa: E402
from streams.schemas import Document, Label, Outcome, Query  # noqa: E402
from streams.service import ApiError, ApiRequest, Output  # noqa: E402
from streams.topics import topic_name  # noqa: E402

QUERIES, LABELS, CONTROL = topic_name("queries"), topic_name("labels"), topic_name("control")
#: What an annotator does with a task it holds (weights): submit, skip, walk away until the lease
#: expires (then maybe submit late), or submit twice.
ACTIONS = {"submit": 0.5, "skip": 0.2, "abandon": 0.2, "double-submit": 0.1}
OPS = {
    ("GET", "/labeling/next"): "next",
    ("POST", "/labeling/{task}"): "submit",
    ("POST", "/labeling/{task}/skip"): "skip",
}


@dataclass
class StormReport:
    """What the clients did and what the published record shows."""

    clients: int
    seconds: float
    tasks: int
    ops: Counter[str] = field(default_factory=Counter)
    answers: Counter[int] = field(default_factory=Counter)
    double_leases: list[str] = field(default_factory=list)
    lost_labels: list[str] = field(default_factory=list)
    double_labels: list[str] = field(default_factory=list)
    requeued_after_expiry: int = 0
    labeled_at_end: int = 0

    def summary(self) -> str:
        ops = sum(self.ops.values())
        return (
            f"{self.clients} annotators, {self.seconds:.0f} s: {ops:,} operations "
            f"({ops / self.seconds:,.0f}/s) "
            f"{dict(self.ops)}; answers {dict(sorted(self.answers.items()))}; tasks {self.tasks}, labeled "
            f"exactly once at the end {self.labeled_at_end}; leases requeued after expiry "
            f"{self.requeued_after_expiry}; double leases {len(self.double_leases)}, lost labels "
            f"{len(self.lost_labels)}, labels counted twice {len(self.double_labels)}"
        )


def make_query(i: int, rng: random.Random) -> Query:
    documents = [Document(doc_id=f"d{j}", features=[rng.gauss(0, 1) for _ in range(4)]) for j in range(4)]
    return Query(query_id=f"q{i}", ts=float(i), documents=documents)


class Storm:
    """The service, its published record, and the clients' view of what was accepted."""

    def __init__(self, lease_s: float, seed: int) -> None:
        budget = 10**9  # every query becomes a task
        self.service = RankService(
            rounds=3, committee_size=2, budget=budget, budget_window=budget, lease_s=lease_s, seed=seed
        )
        self.published: list[Output] = []
        self.delivered = 0  # how much of ``published`` the deliverer has read
        self.accepted: list[tuple[str, str]] = []  # (task, annotator) answered 202
        self.learn_rejections: list[str] = []
        self.queries = 0
        self.rng = random.Random(seed)
        self.handlers = {(r.method, r.path): r.handler for r in self.service.routes()}

        async def emit(output: Output) -> None:
            await asyncio.sleep(0)  # a real send yields to the loop: other handlers run meanwhile
            self.published.append(output)

        self.service.emit = emit

    # -- the worker's side -------------------------------------------------------------------------
    def _process(self, topic: str, records: list[Any]) -> None:
        with self.service.lock:  # as the runner applies a batch
            result = self.service.process(topic, records)
        if topic == LABELS:
            self.learn_rejections += list(result.rejected.values())

    async def feed(self, stop: asyncio.Event, per_round: int, keep_queued: int) -> None:
        """New queries while fewer than ``keep_queued`` tasks wait, like a stream of queries."""
        while not stop.is_set():
            if self.service.queue.counts()["queued"] < keep_queued:
                batch = [make_query(self.queries + i, self.rng) for i in range(per_round)]
                self.queries += per_round
                await asyncio.to_thread(self._process, QUERIES, batch)
            await asyncio.sleep(0.05)

    async def deliver(self, stop: asyncio.Event) -> None:
        """Submitted labels come back through the labels topic (in batches, as a consumer reads)."""
        while True:
            labels = [o.record for o in self.published[self.delivered :] if o.topic == LABELS]
            self.delivered = len(self.published)
            if labels:
                await asyncio.to_thread(self._process, LABELS, labels)
            elif stop.is_set():
                return
            await asyncio.sleep(0.05)

    # -- an annotator -----------------------------------------------------------------------------
    async def call(self, report: StormReport, route: tuple[str, str], request: ApiRequest) -> Any:
        report.ops[OPS[route]] += 1
        try:
            answer = await self.handlers[route](request)
        except ApiError as exc:
            report.answers[exc.status] += 1
            return None
        report.answers[answer.status] += 1
        return answer

    async def submit(self, report: StormReport, task: dict[str, Any], name: str) -> bool:
        grades = {d["doc_id"]: self.rng.randrange(5) for d in task["documents"]}
        request = ApiRequest("POST", {"task": task["task_id"]}, {}, {"grades": grades, "annotator": name})
        answer = await self.call(report, ("POST", "/labeling/{task}"), request)
        if answer is not None and answer.status == 202:
            self.accepted.append((task["task_id"], name))
            return True
        return False

    async def annotator(self, name: str, report: StormReport, stop: asyncio.Event, think_s: float) -> None:
        rng = random.Random(name)
        actions, weights = list(ACTIONS), list(ACTIONS.values())
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0, think_s))
            view = await self.call(
                report, ("GET", "/labeling/next"), ApiRequest("GET", {}, {"annotator": name}, None)
            )
            task = view.body.get("task") if view is not None else None
            if task is None:
                continue
            action = rng.choices(actions, weights)[0]
            if action == "skip":
                request = ApiRequest("POST", {"task": task["task_id"]}, {}, {"annotator": name})
                await self.call(report, ("POST", "/labeling/{task}/skip"), request)
            elif action == "abandon":  # walk away past the lease, then sometimes submit late (409)
                await asyncio.sleep(self.service.queue.lease_s * rng.uniform(1.0, 2.0))
                if rng.random() < 0.5:
                    await self.submit(report, task, name)
            else:
                if await self.submit(report, task, name) and action == "double-submit":
                    await self.submit(report, task, name)  # must be refused: the task is submitted


# -- checks on the published record -------------------------------------------------------------------
def double_leases_and_requeues(outcomes: list[Outcome], labels: list[Label]) -> tuple[list[str], int]:
    """Replay each task's outcomes in ``seq`` order: a lease while another annotator's lease was live
    is a double lease; a lease after the previous holder's lease ran out is a requeue by expiry."""
    submitted_at = {label.task_id: label.ts for label in labels}
    by_task: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_task[outcome.key].append(outcome)
    doubles: list[str] = []
    requeued = 0
    for task, history in by_task.items():
        holder: tuple[str, float] | None = None  # (annotator, expires_at)
        for outcome in sorted(history, key=lambda o: o.seq):
            who = outcome.data["annotator"]
            if outcome.kind == "skip":
                holder = None
                continue
            if task in submitted_at and submitted_at[task] <= outcome.ts:
                doubles.append(f"{task}: leased to {who} at {outcome.ts:.3f} after its label was submitted")
            if holder is not None and holder[0] != who:
                if holder[1] > outcome.ts:
                    doubles.append(f"{task}: leased to {who} while {holder[0]} held it until {holder[1]:.3f}")
                else:
                    requeued += 1
            holder = (who, float(outcome.data["expires_at"]))
    return doubles, requeued


def lost_and_double_labels(storm: Storm, labels: list[Label]) -> tuple[list[str], list[str]]:
    accepted = Counter(task for task, _ in storm.accepted)
    published = Counter(label.task_id for label in labels)
    lost = [task for task in accepted if published[task] == 0 or task not in storm.service.queue.done]
    doubles = [task for task, n in accepted.items() if n > 1]
    doubles += [task for task, n in published.items() if n > 1]
    doubles += storm.learn_rejections  # a label the service refused: a duplicate, or worse
    return lost, doubles


async def drain(storm: Storm, report: StormReport) -> None:
    """One last annotator labels every task left (expired leases included) so each ends done; it
    stops at the first refused submission (a broken queue would offer that task forever)."""
    await asyncio.sleep(storm.service.queue.lease_s)  # the storm's last leases run out
    while True:
        view = await storm.call(
            report, ("GET", "/labeling/next"), ApiRequest("GET", {}, {"annotator": "drain"}, None)
        )
        if view is None or view.body.get("task") is None:
            break
        if not await storm.submit(report, view.body["task"], "drain"):
            break
    stop = asyncio.Event()
    stop.set()
    await storm.deliver(stop)


async def run_storm(
    clients: int = 50, duration_s: float = 60.0, lease_s: float = 0.5, think_s: float = 0.02, seed: int = 0
) -> StormReport:
    """``clients`` annotators for ``duration_s``; see the module docstring for what is checked."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=clients + 4))
    storm = Storm(lease_s, seed)
    report = StormReport(clients, duration_s, 0)
    stop = asyncio.Event()
    helpers = [
        asyncio.create_task(storm.feed(stop, per_round=clients, keep_queued=clients)),
        asyncio.create_task(storm.deliver(stop)),
    ]
    annotators = [
        asyncio.create_task(storm.annotator(f"annotator-{i}", report, stop, think_s)) for i in range(clients)
    ]
    started = time.monotonic()
    await asyncio.sleep(duration_s)
    stop.set()
    await asyncio.gather(*annotators, *helpers)
    report.seconds = time.monotonic() - started
    await drain(storm, report)

    outcomes = [o.record for o in storm.published if o.topic == CONTROL]
    labels = [o.record for o in storm.published if o.topic == LABELS]
    report.double_leases, report.requeued_after_expiry = double_leases_and_requeues(outcomes, labels)
    report.lost_labels, report.double_labels = lost_and_double_labels(storm, labels)
    queue = storm.service.queue
    report.tasks = len(queue.entries) + len(queue.done)
    report.labeled_at_end = len(queue.done) if not queue.entries else 0
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of storm")
    parser.add_argument("--lease-s", type=float, default=0.5, help="lease length (short: many expiries)")
    args = parser.parse_args()
    import os

    report = asyncio.run(run_storm(args.clients, args.duration, args.lease_s))
    print(report.summary())
    print("load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    failures = report.double_leases + report.lost_labels + report.double_labels
    for line in failures[:20]:
        print("  ", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
